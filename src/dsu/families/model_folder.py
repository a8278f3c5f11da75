"""Model folders as UVR and python-audio-separator keep them: an MDX-C / RoFormer / SCNet checkpoint
with its YAML config beside it under one of the names they use, and YAML files told apart by what they
hold (a Demucs bag lists `models`; a model config has a `model:` section).

A checkpoint's config is looked for, in order, as `<name>.yaml`/`.yml`, `<name>_config.yaml`,
`config_<name>.yaml` (the names published configs have), then under the name UVR and
python-audio-separator pair with the file (their download lists, shipped in
`dsu/data/checkpoint_configs.json`, and any `download_checks.json` in the folder), then under the
`config_yaml` UVR's model data gives the file's hash; in the checkpoint's folder, the models dir and
UVR's `model_data/mdx_c_configs/` below them."""
from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .. import untrusted
from ..errors import DSUError
from . import uvr

CHECKS = "download_checks.json"  # UVR's download lists, which python-audio-separator keeps in its model folder
CONFIG_FOLDERS = (".", "model_data/mdx_c_configs", "mdx_c_configs", "MDX_Net_Models/model_data/mdx_c_configs")


# values aliases may add to a document: a config repeats a tuple or two, an alias bomb ("billion
# laughs") expands a few hundred bytes into billions of values that every walk over the config pays for
MAX_ALIAS_VALUES = 10_000


class Refused(yaml.YAMLError):
    """A document DSU will not construct (its aliases expand too far, or into themselves)."""


class ConfigLoader(yaml.SafeLoader):
    """YAML as MSST writes it: the safe subset plus `!!python/tuple`, nothing that builds objects, and
    aliases that add at most MAX_ALIAS_VALUES values and nest at most untrusted.MAX_DEPTH levels."""

    def fetch_more_tokens(self):
        super().fetch_more_tokens()
        # as soon as the scanner sees it: its look-ahead costs the square of the flow nesting
        if self.flow_level > untrusted.MAX_DEPTH or len(self.indents) > untrusted.MAX_DEPTH:
            raise Refused(f"it nests deeper than {untrusted.MAX_DEPTH} levels")

    def compose_document(self):
        node = super().compose_document()
        values, distinct, depth = expansion(node)
        if values - distinct > MAX_ALIAS_VALUES:
            raise Refused(f"its aliases (*name) expand it to {values} values, {values - distinct} more than it "
                          f"holds; DSU refuses YAML whose aliases add more than {MAX_ALIAS_VALUES} (an alias bomb)")
        if depth > untrusted.MAX_DEPTH:  # through aliases
            raise Refused(f"it nests deeper than {untrusted.MAX_DEPTH} levels")
        return node


ConfigLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple",
    lambda loader, node: tuple(loader.construct_sequence(node, deep=True)))


def expansion(root: yaml.Node) -> tuple[int, int, int]:
    """(values, distinct nodes, depth) of a composed document once every alias is replaced by what it
    names, each node counted once however many aliases name it, so an alias bomb costs its size in
    nodes, not its expansion. `Refused` for an alias inside what it names."""
    done: dict[int, tuple[int, int]] = {}  # node id -> (values, depth) once expanded
    open_: set[int] = set()                # nodes whose expansion is under way: their descendants are being counted
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_counted = stack.pop()
        children = _children(node)
        if children_counted:
            done[id(node)] = (1 + sum(done[id(c)][0] for c in children),
                              1 + max((done[id(c)][1] for c in children), default=0))
            open_.discard(id(node))
        elif id(node) in open_:
            raise Refused("an alias (*name) refers to a value that holds it")
        elif id(node) not in done:
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children)
    return done[id(root)][0], len(done), done[id(root)][1]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content, or an error saying in words why it cannot be read."""
    name = Path(path).name
    text = untrusted.read_text(path, "the YAML file", untrusted.YAML_BYTES)
    try:
        return yaml.load(text, Loader=ConfigLoader)
    except Refused as e:
        raise DSUError("bad_value", f"{name} was not read: {e}") from None
    except RecursionError:
        raise DSUError("bad_value", f"{name} was not read: it nests deeper than {untrusted.MAX_DEPTH} levels") from None
    except yaml.constructor.ConstructorError as e:
        tag = getattr(e, "problem", "") or ""
        raise DSUError("bad_value", f"{name} uses a YAML tag that builds Python objects ({tag.split(' ')[-1]}); "
                                    "DSU reads plain YAML (and !!python/tuple) only") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DSUError("bad_value", f"{name} is not valid YAML{where}: "
                                    f"{getattr(e, 'problem', None) or 'a syntax error'}") from None


def yaml_kind(data: Any) -> str | None:
    """'bag' (a Demucs bag: a `models` list), 'config' (a model config: a `model:` section) or None."""
    if isinstance(data, dict) and isinstance(data.get("models"), list) and data["models"]:
        return "bag"
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        return "config"
    return None


def describe_other_yaml(path: Path) -> str:
    """Why a YAML in the models dir is no model: its reading error, or what it lacks."""
    try:
        read_yaml(path)
    except DSUError as e:
        return e.message
    return (f"{path.name} is neither a Demucs bag (no `models` list) nor a model config (no `model:` "
            "section)")


# ---- a checkpoint's config -------------------------------------------------------------------------

def pairs_in(download_lists: Any) -> dict[str, str]:
    """checkpoint name -> config name from UVR's or python-audio-separator's download lists: entries
    `{"x.ckpt": "x_config.yaml"}` or `{"x.ckpt": URL, "x_config.yaml": URL}`."""
    pairs: dict[str, str] = {}
    lists = download_lists.values() if isinstance(download_lists, dict) else ()
    for entries in lists:
        for files in (entries.values() if isinstance(entries, dict) else ()):
            if not isinstance(files, dict):
                continue
            checkpoints = [k for k in files if isinstance(k, str) and k.lower().endswith(".ckpt")]
            configs = [k for k in files if isinstance(k, str) and k.lower().endswith((".yaml", ".yml"))]
            for ckpt in checkpoints:
                value = files[ckpt]
                if isinstance(value, str) and value.lower().endswith((".yaml", ".yml")) and "/" not in value:
                    pairs.setdefault(ckpt, value)
                elif len(configs) == 1:
                    pairs.setdefault(ckpt, configs[0])
    return pairs


@cache
def shipped_pairs() -> dict[str, str]:
    text = resources.files("dsu").joinpath("data", "checkpoint_configs.json").read_text(encoding="utf-8")
    return json.loads(text)["pairs"]


def _folder_pairs(folder: Path) -> dict[str, str]:
    path = folder / CHECKS
    if not path.is_file():
        return {}
    try:
        return pairs_in(untrusted.read_json(path, "UVR's download list"))
    except DSUError:
        return {}  # UVR's own bookkeeping file: a damaged copy only loses these hints


def config_names(checkpoint: Path, models_dir: Path | None = None) -> list[str]:
    """The names a config for `checkpoint` may have, in the order they are tried."""
    stem = checkpoint.stem
    names: list[str | None] = [f"{stem}.yaml", f"{stem}.yml", f"{stem}_config.yaml", f"config_{stem}.yaml"]
    for folder in _roots(checkpoint, models_dir):
        names.append(_folder_pairs(folder).get(checkpoint.name))
    names.append(shipped_pairs().get(checkpoint.name))
    try:
        names.append(uvr.folder_entry(checkpoint, models_dir, "mdxc").get("config_yaml"))
    except DSUError:
        pass  # a malformed model-data file is reported when a UVR model needs it
    return list(dict.fromkeys(n for n in names if n and "/" not in n and "\\" not in n))


def _roots(checkpoint: Path, models_dir: Path | None) -> list[Path]:
    roots = [checkpoint.resolve().parent]
    if models_dir is not None and Path(models_dir).resolve() not in roots:
        roots.append(Path(models_dir).resolve())
    return roots


def config_for(checkpoint: str | Path, models_dir: Path | None = None) -> Path | None:
    """The model config published with `checkpoint`, found beside it as UVR and python-audio-separator
    keep it (see the module's doc); None when there is none."""
    checkpoint = Path(checkpoint)
    for name in config_names(checkpoint, models_dir):
        for root in _roots(checkpoint, models_dir):
            for sub in CONFIG_FOLDERS:
                candidate = root / sub / name
                if candidate.is_file() and _is_config(candidate):
                    return candidate
    return None


def _is_config(path: Path) -> bool:
    try:
        return yaml_kind(read_yaml(path)) == "config"
    except DSUError:
        return False


def missing_config_message(checkpoint: Path, models_dir: Path | None = None) -> str:
    names = config_names(checkpoint, models_dir)
    return (f"{checkpoint.name} needs the YAML config published with it: put it beside the checkpoint as "
            f"{' or '.join(names[:4])}, or give `config_path`")
