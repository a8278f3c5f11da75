"""Apollo restoration models (JusperLee/Apollo and its community checkpoints: apollo_lew_uni,
apollo_lew_v2, apollo_edm_big, ...).

A model is a weights file, optionally with a YAML config whose `model:` section holds Apollo's
`sr`, `win` (ms), `feature_dim` and `layer` (the official `configs/apollo.yaml`, or the MSST-style
`config_apollo*.yaml` published with community models). Weights come as:

- a Lightning `.ckpt`: `state_dict` with the generator under `audio_model.` and the GAN's
  `discriminator.` (and any other training module), which is dropped;
- the official `pytorch_model.bin`: Apollo's `serialize()` dict (`model_name`, `state_dict`,
  `model_args`, `infos`), or a bare state dict.

Architecture values come from the request (`sr`, `win`, `feature_dim`, `layer`), else the config,
else the weights' shapes (`feature_dim`, `layer`), else the reference inference script's defaults
(44100 Hz, 20 ms, 256, 6).

Restoration follows Apollo's own chunked inference (JusperLee/Apollo `inference.run_model`): chunks of
`round(chunk_seconds * sr)` samples every chunk minus overlap, until one reaches the end (no redundant
last chunk), each run zero-padded to the chunk size, linear fades of the overlap in (all but the first
chunk) and out (all but the last), normalised by the summed fades; a file no longer than one chunk is
restored in one piece. (The previous DSU's loop also ran a short extra chunk after one that already
reached the end, a third more work on a 20 s file; its output differs only in that last overlap.)
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .. import backends, memory
from ..engine import Chunk, Pass, Signal
from ..errors import DSUError, listed, missing_keys_message, state_differences
from .base import CATALOGUE, Family, LoadedModel, ModelRef, make_ref, option_names, read_catalogue, read_options
from .packages import load_weights_file

DEFAULTS = {"sr": 44100, "win": 20, "feature_dim": 256, "layer": 6}  # JusperLee's inference.py
ARCH_KEYS = tuple(DEFAULTS)
GENERATOR = "audio_model."


# ---- config ----------------------------------------------------------------------------------------

def read_config(path: str | Path) -> dict | None:
    """The YAML's `model:` section when it describes an Apollo, else None."""
    from .model_folder import read_yaml  # the same safe YAML subset MSST configs use
    config = read_yaml(path)
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not {"feature_dim", "layer"} <= set(model):
        return None
    stated = (config.get("training") or {}).get("model_type") if isinstance(config.get("training"), dict) else None
    if stated and stated != "apollo":
        return None
    return model


def _number(key: str, value, where: str):
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = 0.0
    if not 0 < number < float("inf") or (key != "win" and number != int(number)):
        kind = "number" if key == "win" else "whole number"
        raise DSUError("bad_value", f"{where}: `{key}` must be a positive {kind}, not {value!r}")
    return number if key == "win" and number != int(number) else int(number)


def architecture(request: dict, config: dict | None, config_name: str | None) -> dict:
    """The architecture values given explicitly: the request's over the config's."""
    out = {}
    for key in ARCH_KEYS:
        if request.get(key) is not None:
            out[key] = _number(key, request[key], "request")
        elif config and config.get(key) is not None:
            assert config_name is not None  # a config comes with its file's name
            out[key] = _number(key, config[key], config_name)
    return out


# ---- weights ---------------------------------------------------------------------------------------

def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The generator's state dict from a Lightning `.ckpt`, the official `.bin` or a bare state dict.
    Tensors and plain data only (training metadata is read inert): no code in the file runs."""
    name = Path(path).name
    obj = load_weights_file(path, "an Apollo checkpoint")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise DSUError("bad_value", f"{name} holds no state dict")
    if any(k.startswith(GENERATOR) for k in obj):
        # a Lightning module: the generator only; discriminator, losses and metrics are training's
        obj = {k[len(GENERATOR):]: v for k, v in obj.items() if k.startswith(GENERATOR)}
    else:
        obj = {k: v for k, v in obj.items() if not k.startswith("discriminator.")}
    if not all(isinstance(v, Tensor) for v in obj.values()):
        raise DSUError("bad_value", f"{name} holds a state dict with values that are not tensors")
    return obj


def shape_architecture(state: dict[str, Tensor]) -> dict:
    """`feature_dim` and `layer` as the weights' shapes tell them (when they look like Apollo's)."""
    out = {}
    first = state.get("BN.0.1.weight")
    if first is not None and first.dim() == 3:
        out["feature_dim"] = int(first.shape[0])
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("net.") and k.split(".")[1].isdigit()}
    if blocks:
        out["layer"] = max(blocks) + 1
    return out


def load_weights(model: torch.nn.Module, state: dict[str, Tensor], checkpoint: str, given: dict, sources: dict) -> None:
    """Strict load; a mismatch names the value that does not fit and where it came from."""
    found = shape_architecture(state)
    for key in ("feature_dim", "layer"):
        if key in given and key in found and given[key] != found[key]:
            evidence = ("BN.0.1.weight has shape " + str(tuple(state["BN.0.1.weight"].shape))
                        if key == "feature_dim" else f"it has blocks net.0 to net.{found[key] - 1}")
            raise DSUError("config_mismatch",
                           f"{Path(checkpoint).name} is an Apollo with {key} {found[key]} ({evidence}), but "
                           f"{sources[key]} says {key} {given[key]}: give {key} {found[key]}, or the config "
                           "published with these weights")
    missing, unexpected, misshapen = state_differences(model.state_dict(), state)
    if missing or unexpected:
        raise DSUError("config_mismatch", missing_keys_message(missing, unexpected) +
                       " (is it an Apollo checkpoint, and are `feature_dim`/`layer` right?)")
    if misshapen:
        raise DSUError("config_mismatch",
                       f"{Path(checkpoint).name} does not fit an Apollo with {describe(model)} (shapes differ: "
                       f"{listed(misshapen, 3, '; ')}); check `sr` and `win`, "
                       "which set the band widths, against the config published with these weights"
                       + ("" if {"sr", "win"} <= set(given) else
                          f" (no config or request gave {' nor '.join(k for k in ('sr', 'win') if k not in given)}: "
                          "the reference's 44100 Hz / 20 ms were used)"))
    model.load_state_dict(state, strict=True)


def describe(model) -> str:
    return f"sr {model.sr}, {model.win_samples}-sample window, feature_dim {model.feature_dim}, layer {len(model.net)}"


# ---- the restoration chunks ------------------------------------------------------------------------

def chunk_samples(chunk_seconds, overlap_seconds, samplerate: int) -> tuple[int, int]:
    """(chunk, overlap) in samples as Apollo's inference counts them; chunk 0 means the whole file."""
    defaults = read_options("apollo", {})
    chunk_seconds = defaults["chunk_seconds"] if chunk_seconds is None else float(chunk_seconds)
    overlap_seconds = defaults["overlap_seconds"] if overlap_seconds is None else float(overlap_seconds)
    if not (chunk_seconds >= 0 and overlap_seconds >= 0) or chunk_seconds == float("inf"):
        raise DSUError("bad_value", "chunk_seconds and overlap_seconds must be finite numbers >= 0")
    if chunk_seconds == 0:
        return 0, 0
    chunk = max(1, round(chunk_seconds * samplerate))
    overlap = round(overlap_seconds * samplerate)
    if 2 * overlap > chunk:
        raise DSUError("bad_value", f"overlap_seconds ({overlap_seconds}) must be at most half of chunk_seconds "
                                    f"({chunk_seconds})")
    return chunk, overlap


def crossfade(size: int, overlap: int, fade_in: bool, fade_out: bool) -> Tensor:
    """Ones with linear ramps of min(overlap, size) samples; where the ramps overlap the fade-out wins,
    as in Apollo's `crossfade_weights`."""
    w = torch.ones(size)
    n = min(overlap, size)
    if n > 0:
        ramp = torch.linspace(0.0, 1.0, n)
        if fade_in:
            w[:n] = ramp
        if fade_out:
            w[-n:] = ramp.flip(0)
    return w


def restore_chunks(length: int, chunk: int, overlap: int) -> list[Chunk]:
    """Every `chunk - overlap` samples a chunk of `chunk` (zeros past the end) until one reaches the
    end; one chunk of the whole signal when it fits in one (or `chunk` is 0)."""
    if chunk == 0 or length <= chunk:
        return [Chunk(start=0, size=length, keep=0, out_start=0, out_size=length, window=torch.ones(length))]
    starts = [0]
    while starts[-1] + chunk < length:
        starts.append(starts[-1] + chunk - overlap)
    windows: dict[tuple, Tensor] = {}  # shared between chunks of the same shape
    chunks = []
    for i, start in enumerate(starts):
        kept = min(chunk, length - start)
        key = (kept, i > 0, i < len(starts) - 1)
        if key not in windows:
            windows[key] = crossfade(kept, overlap, fade_in=key[1], fade_out=key[2])
        window = windows[key]
        chunks.append(Chunk(start=start, size=chunk, keep=0, out_start=start, out_size=kept, window=window))
    return chunks


# ---- the loaded model ------------------------------------------------------------------------------

class ApolloModel(LoadedModel):
    """Restores every channel of a signal on its own; one output, `restored`."""
    family = "apollo"
    options = option_names("apollo")

    def __init__(self, name: str, model: torch.nn.Module, device: torch.device):
        from ..models.apollo import Apollo
        assert isinstance(model, Apollo)  # what _load builds
        self.name = name
        self.model = model.to(device).eval()
        self.device = device
        self.samplerate = int(model.sr)
        self.stems = ["restored"]

    def memory_estimate(self, length: int, chunk_seconds=None, overlap_seconds=None, **_):
        """One model call restores one chunk (the whole file when chunk_seconds is 0) with the
        band-split activations of `feature_dim` features."""
        chunk = chunk_samples(chunk_seconds, overlap_seconds, self.samplerate)[0]
        size = length if chunk == 0 else min(chunk, length)
        width = int(getattr(self.model, "feature_dim", 256))
        device = size * memory.FLOAT * max(width // 4, 16)
        host = memory.span_bytes(1, 2, size) + 2 * size * memory.FLOAT
        return memory.Estimate(host, device, f"chunks of {size / self.samplerate:.1f} s")

    def passes(self, signal: Signal, runtime: backends.Runtime = backends.EXACT, chunk_seconds=None,
               overlap_seconds=None, **_) -> list[Pass]:
        chunk, overlap = chunk_samples(chunk_seconds, overlap_seconds, self.samplerate)
        core = self.core(self.model, runtime)

        def restore(x: Tensor) -> Tensor:
            return self.model(x.to(self.device), core=core)[:, None]

        return [Pass(model=restore, signal=signal, chunks=restore_chunks(signal.length, chunk, overlap))]


# ---- family hooks ----------------------------------------------------------------------------------

def _catalogue(models_dir: Path | None) -> dict[str, dict]:
    return read_catalogue(models_dir, ("apollo",))


def loose_weights(models_dir: Path | None) -> dict[str, tuple[Path, Path | None]]:
    """Apollo weights kept loose in the models dir, by file stem -> (weights, its Apollo config or
    None): every `.bin` (the official release is `pytorch_model.bin`; no other family uses `.bin`), and
    each `.ckpt` whose name says Apollo or whose config beside it is an Apollo config."""
    if not models_dir or not Path(models_dir).is_dir():
        return {}
    found = (_apollo_weights(f, models_dir) for f in sorted(Path(models_dir).iterdir()))
    return {f.stem: (f, config) for f, config in filter(None, found)}


def _apollo_weights(f: Path, models_dir: Path) -> tuple[Path, Path | None] | None:
    from .model_folder import config_for
    if f.suffix.lower() not in (".bin", ".ckpt") or not f.is_file():
        return None
    config = config_for(f, models_dir)
    try:
        config = config if config is not None and read_config(config) is not None else None
    except DSUError:
        config = None
    return (f, config) if f.suffix.lower() == ".bin" or "apollo" in f.name.lower() or config else None


def _loose(models_dir: Path | None, name: str) -> tuple[Path, Path | None] | None:
    """The loose weights `name` means: the file's stem or its whole name (`pytorch_model.bin`)."""
    if not models_dir or "/" in name or "\\" in name:
        return None
    for candidate in (name, f"{name}.ckpt", f"{name}.bin"):
        found = _apollo_weights(Path(models_dir) / candidate, Path(models_dir))
        if found:
            return found
    return None


def _ref(name: str, checkpoint, config, request: dict) -> ModelRef:
    model = read_config(config) if config else None
    if config and model is None:
        raise DSUError("config_mismatch", f"{Path(config).name} is not an Apollo config: its `model:` section has "
                                          "no `feature_dim`/`layer`")
    given = architecture(request, model, Path(config).name if config else None)
    files = (checkpoint, config) if config else (checkpoint,)
    sources = {k: ("the request" if request.get(k) is not None else Path(config).name) for k in given}
    return make_ref("apollo", name, files, **given, sources=sources)


def _resolve(request: dict, models_dir: Path | None) -> ModelRef | None:
    model_type = request.get("model_type")
    if model_type and model_type != "apollo":
        return None
    path, config = request.get("model_path"), request.get("config_path")
    if path:
        claimed = (model_type == "apollo" or "apollo" in Path(path).name.lower()
                   or (config is not None and read_config(config) is not None))
        return _ref(Path(path).stem, path, config, request) if claimed else None
    name = request.get("model")
    entry = _catalogue(models_dir).get(name) if name else None
    if entry is None:
        loose = _loose(models_dir, str(name)) if name else None
        return _ref(loose[0].stem, loose[0], loose[1], request) if loose else None
    assert name  # the entry was found by it
    if not entry.get("checkpoint"):
        raise DSUError("bad_value", f"{CATALOGUE} entry {name!r} has no `checkpoint`")
    files = [models_dir / entry[key] if entry.get(key) else None for key in ("checkpoint", "config")]
    for f in files:
        if f is not None and not f.is_file():
            raise DSUError("model_not_found", f"{name}: file not found: {f}")
    return _ref(name, files[0], files[1], request)


def _load(ref: ModelRef, device: torch.device) -> ApolloModel:
    from ..models.apollo import Apollo
    checkpoint = ref.files[0]
    state = read_weights(checkpoint)
    given = {k: ref.option(k) for k in ARCH_KEYS if ref.option(k) is not None}
    sources = dict(ref.option("sources") or ())
    values = {**DEFAULTS, **shape_architecture(state), **given}
    try:
        model = memory.build(lambda: Apollo(**values), device, f"an Apollo with {values}")
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        raise DSUError("config_mismatch", f"cannot build an Apollo with {values}: {e}") from None
    load_weights(model, state, checkpoint, given, sources)
    return ApolloModel(ref.name, model, device)


def _list(models_dir: Path | None) -> list[dict]:
    catalogue = _catalogue(models_dir)
    named = {Path(e.get("checkpoint") or "").name for e in catalogue.values()}
    rows = [{"name": name, "family": "apollo", "type": "apollo", "stems": ["restored"]} for name in catalogue]
    return rows + [{"name": stem, "family": "apollo", "type": "apollo", "stems": ["restored"], "file": f.name,
                    **({"config": config.name} if config else {})}
                   for stem, (f, config) in loose_weights(models_dir).items() if f.name not in named]


FAMILY = Family(name="apollo", layout="flat", default_bit_depth=16, model_types=("apollo",), extensions=(),
                loader=_load, resolver=_resolve, lister=_list)
