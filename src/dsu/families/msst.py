"""Checkpoints of ZFTurbo's Music-Source-Separation-Training (MSST): BS-RoFormer, Mel-Band-RoFormer,
SCNet and MDX23C, each a `.ckpt` state dict plus the YAML config it was trained with.

A model is named by `model_path` + `config_path` (+ `model_type`, else detected from the config or the
file names), or by `model` through `<models-dir>/models.json`:

    {"kim_vocals": {"type": "mel_band_roformer", "config": "kim/config.yaml",
                    "checkpoint": "kim/model.ckpt", "stems": ["vocals"]}}

(an object keyed by name, or a list of such entries each with a "name"; paths are relative to the
models dir).

Inference reproduces MSST's `demix` for the config's `inference` section: chunks of `chunk_size` every
`chunk_size // num_overlap` samples over the mix reflect-padded by the overlap at both ends, a short
last chunk mirrored (or zero-filled when under half a chunk), linear fades of a tenth of a chunk whose
first/last-chunk exceptions depend on how the chunks fall into batches, exactly as MSST's loop does;
then optional normalisation by the mix's mean/std, test-time augmentation (channel swap, polarity) and
`extract_instrumental` as in MSST's `inference.py`."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from .. import backends, memory, protocol
from ..engine import Chunk, Pass, ReflectPad, Signal, Standardised, linear_fade, mono_stats
from ..errors import DSUError, listed, missing_keys_message, state_differences
from . import uvr
from .base import (
    CATALOGUE,
    Family,
    LoadedModel,
    ModelRef,
    capitalised,
    make_ref,
    option_names,
    read_catalogue,
    read_options,
    whole_number,
)
from .model_folder import ConfigLoader, config_for, missing_config_message, read_yaml  # noqa: F401
from .packages import load_weights_file

MODEL_TYPES = protocol.MSST_TYPES  # what build_model builds


# ---- config ----------------------------------------------------------------------------------------

def load_config(path: str | Path) -> dict:
    """The config's sections as plain dicts; `model` and `training` are required."""
    config = read_yaml(path)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise DSUError("bad_value", f"{Path(path).name} is not an MSST config: it has no `model:` section")
    for section in ("audio", "training", "inference"):
        if not isinstance(config.get(section) or {}, dict):
            raise DSUError("bad_value", f"{Path(path).name}: `{section}:` must be a mapping")
        config[section] = config.get(section) or {}
    return config


def instruments(config: dict) -> list[str]:
    """The model's output stems: `training.target_instrument` alone, or every `training.instruments`
    (MSST's prefer_target_instrument)."""
    training = config["training"]
    if training.get("target_instrument"):
        return [str(training["target_instrument"])]
    names = training.get("instruments") or config["model"].get("sources")
    if not names:
        raise DSUError("bad_value", "the MSST config names no stems: give `training.instruments`")
    return [str(n) for n in names]


def chunk_size_of(config: dict) -> int:
    size = config["inference"].get("chunk_size") or config["audio"].get("chunk_size")
    if not size:
        raise DSUError("bad_value", "the MSST config has no `inference.chunk_size` nor `audio.chunk_size`")
    return int(size)


# ---- which architecture ----------------------------------------------------------------------------

def type_from_names(*paths) -> str | None:
    """The model type a file name says, the way users name MSST files ('MelBandRoformer.ckpt',
    'model_bs_roformer_ep_317.ckpt', 'config_musdb18_scnet_xl.yaml', 'MDX23C-8KFFT.ckpt')."""
    for path in paths:
        name = Path(path).name.lower().replace("-", "_")
        if "roformer" in name:
            return "mel_band_roformer" if "mel" in name else "bs_roformer"
        if "scnet" in name:
            return "scnet"
        if "mdx23c" in name:
            return "mdx23c"
    return None


def type_from_config(config: dict) -> str | None:
    """The model type the config's own keys imply (MSST configs may also state `training.model_type`)."""
    stated = config["training"].get("model_type")
    if stated:
        return str(stated)
    keys = set(config["model"])
    if "freqs_per_bands" in keys:
        return "bs_roformer"
    if "num_bands" in keys and "dim" in keys:
        return "mel_band_roformer"
    if {"band_SR", "num_dplayer"} <= keys:
        return "scnet"
    if {"num_subbands", "num_scales"} <= keys:
        return "mdx23c"
    return None


def build_model(model_type: str, config: dict) -> torch.nn.Module:
    """The architecture as its config describes it, random weights."""
    Model: Callable[..., torch.nn.Module]
    if model_type == "bs_roformer":
        from ..models.bs_roformer import BSRoformer as Model
    elif model_type == "mel_band_roformer":
        from ..models.mel_band_roformer import MelBandRoformer as Model
    elif model_type == "scnet":
        from ..models.scnet import SCNet as Model
    elif model_type == "mdx23c":
        from ..models.mdx23c import MDX23C
        Model = MDX23C.from_config
    else:
        raise DSUError("bad_value", f"model_type {model_type!r} is not an MSST type this build knows: "
                                    f"{', '.join(MODEL_TYPES)}")
    try:
        return Model(config) if model_type == "mdx23c" else Model(**config["model"])
    except (TypeError, KeyError) as e:  # a key the architecture does not take, or lacks: another type's config
        implied = type_from_config(config)
        fix = (f"its keys are {implied}'s: give `model_type` {implied}, or leave it out to take the config's"
               if implied and implied != model_type else
               "check `model_type` and that the config is the one published with these weights")
        what = f"has no {e}" if isinstance(e, KeyError) else f"does not fit ({e})"
        raise DSUError("config_mismatch", f"the config {what} for {model_type}; {fix}") from None


# ---- checkpoint ------------------------------------------------------------------------------------

def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The weights of an MSST checkpoint: a plain state dict, or one wrapped in `state`, `state_dict`
    or `model_state_dict` (unwrapped in that order, as MSST does). Tensors and plain data only
    (training metadata is read inert): no code runs."""
    obj = load_weights_file(path, "an MSST checkpoint")
    for wrapper in ("state", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise DSUError("bad_value", f"{Path(path).name} holds no state dict of tensors")
    return obj


def load_weights(model: torch.nn.Module, state: dict[str, Tensor]) -> None:
    """Strict load; any missing, unexpected or misshapen key is the config's fault, said by name."""
    missing, unexpected, misshapen = state_differences(model.state_dict(), state)
    if missing or unexpected:
        raise DSUError("config_mismatch", missing_keys_message(missing, unexpected))
    if misshapen:
        raise DSUError("config_mismatch", f"the checkpoint does not fit its config (shapes differ: "
                                          f"{listed(misshapen, 3, '; ')}); "
                                          "check that the config file is the one published with these weights")
    model.load_state_dict(state, strict=True)


# ---- MSST demix as engine chunks -------------------------------------------------------------------

def demix_border(length: int, chunk_size: int, num_overlap: int) -> int:
    """Reflect padding MSST adds at both ends: the overlap, when the mix is long enough for it."""
    border = chunk_size - chunk_size // num_overlap
    return border if border > 0 and length > 2 * border else 0


def demix_chunks(length: int, chunk_size: int, num_overlap: int, batch_size: int) -> list[Chunk]:
    """MSST demix's chunks over a `length`-sample mix, as engine chunks on the padded signal
    (see `demix_border`) landing on the unpadded timeline.

    The fades follow MSST's batch loop: the window is chosen once per batch from the position of its
    last chunk, so fade-in is dropped only when the first batch holds the first chunk alone, and
    fade-out is dropped for every chunk of the last batch (unless that batch is also the first)."""
    step = chunk_size // num_overlap
    fade = chunk_size // 10
    pad = demix_border(length, chunk_size, num_overlap)
    padded = length + 2 * pad
    starts = range(0, padded, step)
    n = len(starts)
    windows = {(fade_in, fade_out): linear_fade(chunk_size, fade, fade_in, fade_out)
               for fade_in in (False, True) for fade_out in (False, True)}
    chunks = []
    for k, start in enumerate(starts):
        last_of_batch = min((k // batch_size + 1) * batch_size, n) - 1
        first_alone = last_of_batch == 0
        fade_in, fade_out = not first_alone, first_alone or last_of_batch != n - 1
        valid = min(chunk_size, padded - start)
        lo, hi = max(start, pad), min(start + valid, pad + length)
        if hi <= lo:  # lands wholly in the padding that is cut off
            continue
        chunks.append(Chunk(start=start, size=chunk_size, keep=lo - start, out_start=lo - pad,
                            out_size=hi - lo, window=windows[fade_in, fade_out][lo - start:hi - start],
                            reflect_tail=valid > chunk_size // 2))
    return chunks


# ---- the loaded model ------------------------------------------------------------------------------

class MSSTModel(LoadedModel):
    family = "msst"
    options = option_names("msst")

    def __init__(self, name: str, model_type: str, config: dict, model: torch.nn.Module, device: torch.device):
        self.name, self.model_type, self.config = name, model_type, config
        self.model = model.to(device).eval()
        self.device = device
        self.samplerate = int(config["audio"].get("sample_rate", 44100))
        self.audio_channels = int(config["audio"].get("num_channels", 2))
        self.stems = instruments(config)
        # python-audio-separator's name for the rest of the mix beside a single-target model's stem, as
        # UVR's copy of the config names it: the config's other instrument, except a vocals model's
        # `other` (UVR's copies say Instrumental), else UVR's counterpart (Vocals -> Instrumental, X -> No X)
        named = [str(n) for n in config["training"].get("instruments") or [] if str(n) != self.stems[0]]
        target = capitalised(self.stems[0], "msst")
        rest = named[0] if named and not (named[0].lower() == "other" and target == "Vocals") else None
        self.labels = {"instrumental": capitalised(rest, "msst") if rest else uvr.secondary_stem(target)}
        self.chunk_size = chunk_size_of(config)
        self.num_overlap = int(config["inference"].get("num_overlap", 2))
        self.batch_size = int(config["inference"].get("batch_size", 1))
        self.normalize = config["inference"].get("normalize") is True
        self.amp = bool(config["training"].get("use_amp", True))

    def memory_estimate(self, length: int, **options):
        """One model call holds `batch_size` chunks with their spectrograms and activations; the
        overlap-add holds about two chunks of every stem."""
        opts = self._settings(options)
        size, batch = opts["chunk_size"], opts["batch_size"]
        stems = len(self.stems) + 1
        host = memory.span_bytes(stems, self.audio_channels, size) + 2 * size * self.audio_channels * memory.FLOAT
        device = batch * size * self.audio_channels * memory.FLOAT * (1 + stems) * 16
        return memory.Estimate(host, device, f"chunk_size={size}, batch_size={batch}")

    def _settings(self, options: dict) -> dict:
        """The request's options, the config's chunk_size, num_overlap and batch_size where it gives none."""
        return read_options("msst", options, own={"chunk_size": self.chunk_size, "overlap": self.num_overlap,
                                                  "batch_size": self.batch_size})

    def passes(self, signal: Signal, runtime: backends.Runtime = backends.EXACT, **options) -> list[Pass]:
        opts = self._settings(options)
        size, batch = opts["chunk_size"], opts["batch_size"]
        num_overlap = whole_number("overlap", opts["overlap"], 1)
        if num_overlap > size:
            raise DSUError("bad_value", f"overlap {num_overlap} is more than chunk_size {size} samples")
        source: Signal = signal
        scale = None
        if self.normalize:
            mean, std = mono_stats(signal)
            if std > 0:  # MSST would divide by zero on digital silence; leave such a mix as it is
                scale = (mean, std)
                source = Standardised(signal, mean, std)
        border = demix_border(signal.length, size, num_overlap)
        if border:
            source = ReflectPad(source, border)
        fn = self.chunk_fn(runtime, opts["use_tta"], scale)
        # MSST de-normalises after its overlap-add, so a sample no window weighted ends up as the mean
        return [Pass(model=fn, signal=source, chunks=demix_chunks(signal.length, size, num_overlap, batch),
                     batch_size=batch, unweighted=scale[0] if scale else 0.0)]

    def chunk_fn(self, runtime: backends.Runtime, use_tta: bool, scale: tuple[float, float] | None):
        """[batch, channels, n] -> [batch, stems, channels, n]; with TTA, the mean of the model on the
        chunk, on it with channels swapped (swapped back) and on it negated (negated back), which is
        MSST's average of three demixes since windowing and overlap-add are linear."""
        whole = not hasattr(self.model, "core")  # a network not cut in three runs whole on the backend
        core = self.core(self.model, runtime, core=self.model if whole else None)

        def separate(x: Tensor) -> Tensor:
            y = (core(x) if whole else self.model(x, core=core)).float()
            if y.dim() == 3:  # single-stem RoFormers drop the stem axis
                y = y[:, None]
            if y.shape[1] != len(self.stems):
                raise DSUError("config_mismatch", f"the model gives {y.shape[1]} stems but the config names "
                                                  f"{len(self.stems)} ({', '.join(self.stems)}): check "
                                                  "`training.instruments` / `target_instrument`")
            if y.shape[-1] != x.shape[-1]:  # e.g. a Mel-RoFormer's STFT cuts a chunk that is not whole hops
                raise DSUError("bad_value", f"the model returns {y.shape[-1]} samples for a chunk of "
                                            f"{x.shape[-1]}: choose a chunk_size that is a multiple of its hop")
            return y

        def run(x: Tensor) -> Tensor:
            x = x.to(self.device)
            y = separate(x)
            if use_tta:
                y = (y + separate(x.flip(1)).flip(2) - separate(-x)) / 3
            if scale is not None:
                y = y * scale[1] + scale[0]
            return y
        return run

    def output_stems(self, extract_instrumental=False, **_) -> list[str]:
        if extract_instrumental and "instrumental" not in self.stems:
            return [*self.stems, "instrumental"]
        return list(self.stems)

    def finish(self, stems: dict[str, Tensor], mix: Tensor, extract_instrumental=False, **_) -> dict[str, Tensor]:
        """MSST's `extract_instrumental`: the mix minus vocals (or the first stem), replacing any
        `instrumental` the model gives."""
        if extract_instrumental:
            target = "vocals" if "vocals" in self.stems else self.stems[0]
            stems = {**stems, "instrumental": mix - stems[target]}
        return stems


# ---- family hooks ----------------------------------------------------------------------------------

def _catalogue(models_dir: Path | None) -> dict[str, dict]:
    return read_catalogue(models_dir, MODEL_TYPES)


def _resolve(request: dict, models_dir: Path | None) -> ModelRef | None:
    model_type = request.get("model_type")  # when given, the registry asks only this family
    path = request.get("model_path")
    if path:
        config = request.get("config_path") or config_for(path, models_dir)
        if not config:
            if model_type or type_from_names(path):
                raise DSUError("missing_field", missing_config_message(Path(path), models_dir))
            return None
        return _checkpoint_ref(Path(path), Path(config), model_type)
    name = request.get("model")
    entry = _catalogue(models_dir).get(name) if name else None
    if entry is None:
        checkpoint = _checkpoint_in(models_dir, name)
        if checkpoint is None:
            return None
        config = config_for(checkpoint, models_dir)
        if config is None:
            raise DSUError("model_not_found", missing_config_message(checkpoint, models_dir))
        return _checkpoint_ref(checkpoint, config, model_type, strict=True)
    assert name  # the entry was found by it
    if model_type and entry["type"] != model_type:
        return None
    files = []
    for key in ("checkpoint", "config"):
        if not entry.get(key):
            raise DSUError("bad_value", f"{CATALOGUE} entry {name!r} has no `{key}`")
        f = models_dir / entry[key]
        if not f.is_file():
            raise DSUError("model_not_found", f"{name}: {key} file not found: {f}")
        files.append(f)
    return make_ref("msst", name, files, model_type=entry["type"])


def _checkpoint_in(models_dir: Path | None, name) -> Path | None:
    """The `.ckpt` a model name means in the models dir: its file name, with or without `.ckpt`
    (python-audio-separator names models by file name)."""
    if not name or not models_dir:
        return None
    for folder in uvr.model_folders(models_dir, "mdxc"):  # UVR keeps them in MDX_Net_Models/
        for candidate in (folder / str(name), folder / f"{name}.ckpt"):
            if candidate.suffix.lower() == ".ckpt" and candidate.is_file():
                return candidate
    return None


def _checkpoint_ref(checkpoint: Path, config: Path, model_type: str | None, strict: bool = False) -> ModelRef | None:
    """The checkpoint with its config; the architecture as the config's keys tell it (as
    python-audio-separator takes it from the YAML), else the file names."""
    model_type = model_type or type_from_config(load_config(config)) or type_from_names(checkpoint, config)
    if model_type not in MODEL_TYPES:
        if strict:
            raise DSUError("bad_value", f"cannot tell which architecture {checkpoint.name} with {config.name} is: "
                                        f"give `model_type` ({', '.join(MODEL_TYPES)})")
        return None
    return make_ref("msst", checkpoint.stem, (checkpoint, config), model_type=model_type)


def _load(ref: ModelRef, device: torch.device) -> MSSTModel:
    checkpoint, config_path = ref.files
    config = load_config(config_path)
    model_type = ref.option("model_type")
    model = memory.build(lambda: build_model(model_type, config), device,
                         f"the {model_type} {Path(config_path).name} describes")
    load_weights(model, read_state_dict(checkpoint))
    return MSSTModel(ref.name, model_type, config, model, device)


def _list(models_dir: Path | None) -> list[dict]:
    out = []
    listed = set()
    config_stems: dict[str, list[str]] = {}  # entries may share a config: read each once
    for name, entry in _catalogue(models_dir).items():
        stems, config = entry.get("stems"), entry.get("config")
        if not stems and config:
            if config not in config_stems:
                try:
                    path = models_dir / config
                    config_stems[config] = instruments(load_config(path)) if path.is_file() else []
                except DSUError:
                    config_stems[config] = []
            stems = config_stems[config]
        out.append({"name": name, "family": "msst", "type": entry["type"], "stems": list(stems or [])})
        listed.add(os.path.basename(entry.get("checkpoint") or ""))
    folders = uvr.model_folders(models_dir, "mdxc") if models_dir and models_dir.is_dir() else []
    from .apollo import loose_weights
    apollo = {f for f, _ in loose_weights(models_dir).values()}  # the Apollo family lists those
    for checkpoint in (c for folder in folders for c in sorted(folder.glob("*.ckpt"))):
        if checkpoint.name not in listed and checkpoint not in apollo:
            out.append(_describe_checkpoint(checkpoint, models_dir))
    return out


def _describe_checkpoint(checkpoint: Path, models_dir: Path | None) -> dict:
    """A `.ckpt` of the models dir as python-audio-separator users keep them, with the config beside it."""
    entry = {"name": checkpoint.stem, "family": "msst", "file": checkpoint.name, "stems": []}
    config = config_for(checkpoint, models_dir)
    if config is None:
        return {**entry, "error": missing_config_message(checkpoint, models_dir)}
    try:
        ref = _checkpoint_ref(checkpoint, config, None, strict=True)
        assert ref is not None  # strict: it raises instead
        return {**entry, "type": ref.option("model_type"), "config": config.name,
                "stems": instruments(load_config(config))}
    except DSUError as e:
        return {**entry, "config": config.name, "error": e.message}


FAMILY = Family(name="msst", layout="flat", default_bit_depth=32, model_types=MODEL_TYPES,
                extensions=(".ckpt",), loader=_load, resolver=_resolve, lister=_list)
