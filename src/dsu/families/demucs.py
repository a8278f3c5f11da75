"""Demucs models as demucs publishes them: `<sig>.th` / `<sig>-<sha8>.th` packages (a pickled dict of
`klass, args, kwargs, state, ...`, the state possibly float16 or diffq-quantized) and bag YAMLs
(`models`, optional `weights` per source, optional `segment`), found by name in `repo` or the models
dir, or given by `model_path` (a .th or a bag .yaml).

The network classes are demucs' own (`demucs==4.1.0`), so a package builds exactly the module demucs
builds. Everything around them is DSU's: the package is read by `dsu.families.packages` (only the demucs
classes, Fraction and diffq's quantizers may appear in it), the sha8 suffix is checked, and inference
reproduces the demucs CLI through `dsu.engine`: the mix normalised by its mono mean and std (N-1,
+1e-8), `apply_model`'s segments with triangular weights and context padding, one pass per bag
member and random shift weighted per source, then de-normalised."""
from __future__ import annotations

import inspect
import random
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from .. import backends, memory
from ..engine import Chunk, Pass, Signal, Standardised, cancel_point, mono_stats, triangle
from ..errors import DSUError, missing_keys_message
from . import demucs_core
from .base import Family, LoadedModel, ModelRef, make_ref, option_names, read_options
from .model_folder import describe_other_yaml, read_yaml, yaml_kind
from .packages import first_line, load_package, verify_checksum

MODEL_TYPES = ("demucs", "hdemucs", "htdemucs")
CHECKSUMMED = re.compile(r"^(?P<sig>.+)-(?P<sha>[0-9a-f]{8})$")


# ---- files -----------------------------------------------------------------------------------------

def signature(path: Path) -> tuple[str, str | None]:
    """`<sig>-<sha8>.th` -> (sig, sha8); any other `<name>.th` -> (name, None)."""
    m = CHECKSUMMED.match(path.stem)
    return (m["sig"], m["sha"]) if m else (path.stem, None)


def find_package(folder: Path, sig: str) -> Path | None:
    found = [p for p in folder.glob("*.th") if signature(p)[0] == sig]
    if len(found) > 1:
        raise DSUError("bad_value", f"{folder} holds {len(found)} files for the Demucs model {sig} "
                                    f"({', '.join(p.name for p in found)}): keep one")
    return found[0] if found else None


def read_bag(path: Path) -> dict | None:
    """The bag a YAML describes, or None when the YAML is something else (e.g. another family's config)."""
    bag = read_yaml(path)
    return bag if yaml_kind(bag) == "bag" else None


def bag_members(bag_file: Path, bag: dict, folder: Path) -> list[Path]:
    members = []
    for sig in bag["models"]:
        path = find_package(folder, str(sig))
        if path is None:
            raise DSUError("model_not_found", f"the bag {bag_file.name} needs the model {sig}: no {sig}.th or "
                                              f"{sig}-<sha8>.th in {folder}")
        members.append(path)
    return members


# ---- packages --------------------------------------------------------------------------------------

def model_classes() -> dict[str, type]:
    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs
    return {"demucs": Demucs, "hdemucs": HDemucs, "htdemucs": HTDemucs}


def quantizer_classes() -> list[type]:
    try:
        from diffq import DiffQuantizer, UniformQuantizer
    except ImportError:
        return []
    return [DiffQuantizer, UniformQuantizer]


def read_package(path: Path, mmap: bool | None = None) -> dict:
    """The package dict, checked for the keys demucs' `serialize_model` writes."""
    package = load_package(path, [*model_classes().values(), Fraction, *quantizer_classes()],
                           "Demucs model package", mmap=mmap)
    if not isinstance(package, dict) or not {"klass", "state"} <= set(package):
        raise DSUError("bad_value", f"{path.name} is not a Demucs model package (no `klass`/`state`)")
    if package["klass"] not in model_classes().values():
        raise DSUError("bad_value", f"{path.name}: `klass` must be one of the Demucs model classes")
    if not isinstance(package.get("args", ()), (tuple, list)) or not isinstance(package.get("kwargs", {}), dict):
        raise DSUError("bad_value", f"{path.name}: `args`/`kwargs` are not a list and a mapping")
    return package


def package_sources(package: dict) -> list[str]:
    args, kwargs = package.get("args") or (), package.get("kwargs") or {}
    return [str(s) for s in kwargs.get("sources", args[0] if args else [])]


def load_model(path: Path, device: torch.device = torch.device("cpu")) -> torch.nn.Module:
    """A package file as the module demucs' `load_model` builds, after checking its sha8 suffix and
    that the module its arguments describe fits in memory (for `device`)."""
    sha = signature(path)[1]
    if sha:
        verify_checksum(path, sha)
    package = read_package(path)
    klass = package["klass"]
    args, kwargs = tuple(package.get("args") or ()), dict(package.get("kwargs") or {})
    accepted = inspect.signature(klass).parameters
    for key in [k for k in kwargs if k not in accepted]:  # as demucs: parameters older code had are dropped
        del kwargs[key]
    try:
        model = memory.build(lambda: klass(*args, **kwargs), device, f"the {klass.__name__} of {path.name}")
    except (TypeError, ValueError, AssertionError) as e:
        raise DSUError("config_mismatch", f"{path.name}: its arguments do not build a {klass.__name__}: {e}") from None
    state = package["state"]
    if not isinstance(state, dict):
        raise DSUError("bad_value", f"{path.name}: `state` is not a mapping")
    if state.get("__quantized"):
        restore_quantized(model, state, path)
    else:
        load_state(model, state, path)
    return model.eval()


def load_state(model: torch.nn.Module, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state)  # strict; Demucs' override renames keys of its older releases first
    except RuntimeError as e:
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing or unexpected:
            raise DSUError("config_mismatch", missing_keys_message(missing, unexpected, path.name)) from None
        raise DSUError("config_mismatch", f"{path.name}: its weights do not fit its arguments "
                                          f"({first_line(e)})") from None


def restore_quantized(model: torch.nn.Module, state: dict, path: Path) -> None:
    """A diffq-quantized state, restored by diffq's own quantizer class named in the package."""
    quantizers = quantizer_classes()
    if not quantizers:
        raise DSUError("bad_value", f"{path.name} is diffq-quantized: install `diffq` to use it")
    meta = state.get("meta")
    if not isinstance(meta, dict) or meta.get("klass") not in quantizers:
        raise DSUError("bad_value", f"{path.name} is quantized in a diffq format this build cannot read "
                                    "(its state has no diffq `meta`); use the float version of this model")
    from diffq import restore_quantized_state
    try:
        restore_quantized_state(model, state)
    except Exception as e:
        raise DSUError("config_mismatch", f"{path.name}: its quantized weights do not fit its arguments "
                                          f"({first_line(e)})") from None


# ---- apply_model as engine passes ------------------------------------------------------------------

def mix_stats(signal: Signal) -> tuple[float, float]:
    """The demucs CLI's `ref.mean()` and `ref.std() + 1e-8` of the mono mix `ref` (std with N-1),
    rounded to float32 as demucs' tensors are."""
    mean, std = mono_stats(signal, ddof=1)
    as32 = torch.tensor([mean, std], dtype=torch.float32)
    return float(as32[0]), float(as32[1] + 1e-8)


def valid_length(model: torch.nn.Module, n: int, segment) -> int:
    """apply_model's input size for a chunk of `n` samples: the HTDemucs training length (or the
    requested segment), the conv-friendly length of Demucs, `n` itself for HDemucs."""
    from demucs.htdemucs import HTDemucs
    if isinstance(model, HTDemucs) and segment is not None:
        return int(segment * model.samplerate)
    valid = getattr(model, "valid_length", None)
    return valid(n) if valid is not None else n


def segment_chunks(model: torch.nn.Module, length: int, segment, overlap: float, shift: int = 0,
                   requested_segment=None) -> list[Chunk]:
    """apply_model's split of the mix seen from `shift` (<= 0: that many zeros before it) to its end:
    segments every `(1 - overlap) * segment` samples, each fed with context centred around it up to
    its valid length (TensorChunk.padded), weighted by a triangle; the engine drops outputs before 0."""
    size = int(model.samplerate * segment)
    stride = int((1 - overlap) * size)
    window = triangle(size)  # the CLI's transition_power is 1
    span = length - shift
    chunks = []
    for offset in range(0, span, stride):
        n = min(span - offset, size)
        start = shift + offset
        fed = valid_length(model, n, requested_segment)
        context = (fed - n) // 2
        chunks.append(Chunk(start=start - context, size=fed, keep=context, out_start=start, out_size=n,
                            window=window[:n]))
    return chunks


def replay_forward_draws(model: torch.nn.Module, chunks: int) -> None:
    """HTDemucs' forward draws from `random` for its sinusoidal time embedding; apply_model runs the
    chunks of one shift before drawing the next shift, so drawing as many here keeps the shift
    offsets equal to demucs' for the same seed."""
    transformer = getattr(model, "crosstransformer", None)
    if transformer is not None and getattr(transformer, "emb", None) == "sin":
        for _ in range(chunks):
            random.randrange(transformer.sin_random_shift + 1)


# ---- the loaded model ------------------------------------------------------------------------------

# activations of one model call per byte of its input and outputs: HTDemucs' cross-transformer holds
# far more than the convolutional models (a random HTDemucs at the published size added 779 MB on a
# 60 s input, `benchmarks/memory_estimate.py --real`)
ACTIVATIONS = {"HTDemucs": 64}


class DemucsModel(LoadedModel):
    family = "demucs"
    options = option_names("demucs")

    # models: demucs' Demucs, HDemucs or HTDemucs, whose sources, samplerate, audio_channels and segment
    # are plain attributes that nn.Module's typing cannot see
    def __init__(self, name: str, models: list[Any], weights=None, segment=None,
                 device: torch.device = torch.device("cpu")):
        self.name, self.device = name, device
        first = models[0]
        for m in models[1:]:
            if list(m.sources) != list(first.sources) or m.samplerate != first.samplerate \
                    or m.audio_channels != first.audio_channels:
                raise DSUError("config_mismatch", f"the bag {name} mixes models with different sources, "
                                                  "sample rates or channels")
        self.stems = [str(s) for s in first.sources]
        self.samplerate, self.audio_channels = int(first.samplerate), int(first.audio_channels)
        if weights is None:
            weights = [[1.0] * len(self.stems) for _ in models]
        if not isinstance(weights, list) or len(weights) != len(models) \
                or any(not isinstance(w, list) or len(w) != len(self.stems) for w in weights):
            raise DSUError("config_mismatch", f"the bag {name} needs one weight per source ({len(self.stems)}) "
                                              f"for each of its {len(models)} models")
        try:
            self.weights = [[float(x) for x in w] for w in weights]
        except (TypeError, ValueError):
            raise DSUError("config_mismatch", f"the bag {name}: `weights` must be numbers") from None
        from demucs.htdemucs import HTDemucs
        if segment is not None:  # a bag's segment, as BagOfModels sets it (never longer for HTDemucs)
            for m in models:
                if not isinstance(m, HTDemucs) or segment <= m.segment:
                    m.segment = segment
        self.max_segment = min((float(m.segment) for m in models if isinstance(m, HTDemucs)), default=float("inf"))
        self.bag = torch.nn.ModuleList(models).to(device).eval()

    def memory_estimate(self, length: int, **options):
        """Every shift of every bag member is a pass whose overlap-add span (about two segments of all
        sources) is held at once; one model call holds `batch_size` segments and their activations."""
        opts = read_options("demucs", options)
        shifts, segment, batch = opts["shifts"], opts["segment"], opts["batch_size"]
        seconds = max(float(segment if segment is not None else m.segment) for m in cast("list[Any]", self.bag))
        span = min(int(seconds * self.samplerate), length + int(seconds * self.samplerate))
        passes = max(shifts, 1) * len(self.bag)
        stride = max(1, int((1 - float(opts["overlap"])) * span))
        plan = passes * (length // stride + 1) * 512  # the chunk lists
        host = passes * memory.span_bytes(len(self.stems), self.audio_channels, span) + plan
        factor = max(ACTIVATIONS.get(type(m).__name__, 16) for m in self.bag)
        device = batch * span * self.audio_channels * memory.FLOAT * (1 + len(self.stems)) * factor
        return memory.Estimate(host, device, f"shifts={shifts}, {len(self.bag)} model(s), segment={seconds:g} s, "
                                             f"batch_size={batch}")

    def peak_limit(self, **options) -> float | None:
        """demucs' `--clip-mode rescale` (its CLI's default): a stem peaking above 1/1.01 is scaled down
        to it as a whole; `none` (this family's default): samples past full scale are clipped when
        written as integers."""
        return 1 / 1.01 if read_options("demucs", options)["clip_mode"] == "rescale" else None

    def passes(self, signal: Signal, runtime: backends.Runtime = backends.EXACT, **options) -> list[Pass]:
        opts = read_options("demucs", options)
        shifts, overlap, segment, batch = opts["shifts"], opts["overlap"], opts["segment"], opts["batch_size"]
        if not overlap < 1:  # the table's range is MSST's too
            raise DSUError("bad_value", f"overlap must be a number in [0, 1), not {overlap!r}")
        if segment is not None:
            if segment > self.max_segment:
                raise DSUError("bad_value", f"segment {segment} is longer than {self.name} was trained for "
                                            f"(at most {self.max_segment:g} s)")
        mean, std = mix_stats(signal)
        source = Standardised(signal, mean, std)
        max_shift = int(0.5 * self.samplerate)
        out = []
        models = cast("list[Any]", self.bag)  # the models, as in __init__
        for member, (model, weight) in enumerate(zip(models, self.weights, strict=True)):
            seconds = segment if segment is not None else model.segment
            if int((1 - overlap) * int(model.samplerate * seconds)) < 1:
                raise DSUError("bad_value", f"overlap {overlap} leaves no step between segments")
            fn = self.forward(model, mean, std, runtime, member if len(models) > 1 else None)
            for _shift in range(max(shifts, 1)):  # no shifts: the mix as it is, once
                cancel_point(signal)
                offset = random.randint(0, max_shift) if shifts else max_shift
                chunks = segment_chunks(model, signal.length, seconds, overlap, offset - max_shift,
                                        requested_segment=segment)
                replay_forward_draws(model, len(chunks))
                out.append(Pass(model=fn, signal=source, chunks=chunks, weight=weight, batch_size=batch))
        return out

    def forward(self, model: torch.nn.Module, mean: float, std: float, runtime: backends.Runtime,
                member: int | None = None):
        """One model call on a batch of segments, de-normalised; `runtime` runs the network's core
        (`demucs_core`), each bag member's its own."""
        name = f"{self.name} ({self.family}{'' if member is None else f', model {member + 1}'})"
        core = self.core(model, runtime, core=demucs_core.core_fn(model), name=name)

        def run(x: Tensor) -> Tensor:
            return demucs_core.forward(model, x.to(self.device), core) * std + mean
        return run


# ---- family hooks ----------------------------------------------------------------------------------

def _folder(request: dict, models_dir: Path | None) -> Path | None:
    repo = request.get("repo")
    if repo:
        if not Path(repo).is_dir():
            raise DSUError("model_not_found", f"repo folder not found: {repo}")
        return Path(repo)
    return models_dir if models_dir and models_dir.is_dir() else None


def _bag_ref(name: str, bag_file: Path, folder: Path) -> ModelRef | None:
    bag = read_bag(bag_file)
    if bag is None:
        return None
    return make_ref("demucs", name, [bag_file, *bag_members(bag_file, bag, folder)], bag=True)


def _resolve(request: dict, models_dir: Path | None) -> ModelRef | None:
    path = request.get("model_path")
    if path:
        path = Path(path)
        if path.suffix == ".th":
            return make_ref("demucs", signature(path)[0], [path])
        if path.suffix in (".yaml", ".yml"):
            repo = request.get("repo")
            return _bag_ref(path.stem, path, Path(repo) if repo else path.parent)
        return None
    name = request.get("model")
    folder = _folder(request, models_dir)
    if not name or folder is None:
        return None
    name = str(name)
    if name.lower().endswith((".yaml", ".yml")):  # a bag by its file name, as python-audio-separator names it
        bag_file = folder / name
        return _bag_ref(Path(name).stem, bag_file, folder) if bag_file.is_file() else None
    if name.endswith(".th"):
        name = signature(Path(name))[0]
    package = find_package(folder, str(name))
    if package is not None:
        return make_ref("demucs", str(name), [package])
    bag_file = folder / f"{name}.yaml"
    ref = _bag_ref(str(name), bag_file, folder) if bag_file.is_file() else None
    if ref is None and request.get("repo"):
        raise DSUError("model_not_found", f"no Demucs model or bag named {name!r} in {folder} "
                                          f"(looked for {name}.th, {name}-<sha8>.th and {name}.yaml)")
    return ref


def _load(ref: ModelRef, device: torch.device) -> DemucsModel:
    if not ref.option("bag"):
        return DemucsModel(ref.name, [load_model(Path(ref.files[0]), device)], device=device)
    bag_file, *members = (Path(f) for f in ref.files)
    bag = read_bag(bag_file)
    if bag is None:
        raise DSUError("bad_value", f"{bag_file.name} is no longer a Demucs bag (it has no `models` list)")
    segment = bag.get("segment")
    if segment is not None and (not isinstance(segment, (int, float)) or segment <= 0):
        raise DSUError("bad_value", f"{bag_file.name}: `segment` must be a positive number of seconds")
    return DemucsModel(ref.name, [load_model(p, device) for p in members], bag.get("weights"), segment, device)


def _describe(path: Path) -> dict:
    package = read_package(path, mmap=True)
    kind = next(t for t, k in model_classes().items() if k is package["klass"])
    return {"type": kind, "stems": package_sources(package)}


def _list(models_dir: Path | None) -> list[dict]:
    """Bags and single models in the models dir; stems come from the packages' pickled arguments
    (tensors are only mapped, checksums are checked when a model is loaded)."""
    if models_dir is None or not models_dir.is_dir():
        return []
    out = []
    for path in sorted(models_dir.glob("*.th")):
        entry: dict[str, Any] = {"name": signature(path)[0], "family": "demucs", "file": path.name}
        try:
            entry.update(_describe(path))
        except DSUError as e:
            entry.update(stems=[], error=e.message)
        out.append(entry)
    for path in sorted([*models_dir.glob("*.yaml"), *models_dir.glob("*.yml")]):
        entry = {"name": path.stem, "family": "demucs", "type": "bag", "file": path.name, "stems": []}
        try:
            bag = read_yaml(path)
        except DSUError as e:  # not YAML DSU reads: say so in words, whatever it was meant to be
            out.append({**entry, "family": "unknown", "type": None, "error": e.message})
            continue
        kind = yaml_kind(bag)
        if kind == "config":  # a model config: listed with the checkpoint it belongs to
            continue
        if kind is None:
            out.append({**entry, "family": "unknown", "type": None, "error": describe_other_yaml(path)})
            continue
        try:
            members = bag_members(path, bag, models_dir)
            entry.update(_describe(members[0]), type="bag", models=[str(s) for s in bag["models"]])
        except DSUError as e:
            entry["error"] = e.message
        out.append(entry)
    return out


FAMILY = Family(name="demucs", layout="demucs", default_bit_depth=16, model_types=MODEL_TYPES,
                extensions=(".th",), loader=_load, resolver=_resolve, lister=_list)
