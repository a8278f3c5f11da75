"""The worker protocol as data: every command with its fields, every message, every error code.

The server validates requests against this table (so `missing_field` and `bad_value` come from it),
the client reads which replies end a request from it, and docs/protocol.md is generated from it:
what is written here is what the worker does. Nothing here imports torch."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

from .device import KINDS
from .errors import CODES, DSUError, shown

BACKENDS = ("auto", "torch", "openvino")  # what runs a model's network (dsu.backends)
PRECISIONS = ("auto", "float32", "float16", "bfloat16")

PROTOCOL = 1

# ---- types ------------------------------------------------------------------------------------------

TYPES = {  # name -> (check, how it is written in docs and errors)
    "any": (lambda v: True, "any JSON value"),
    "string": (lambda v: isinstance(v, str), "a string"),
    "integer": (lambda v: isinstance(v, int) and not isinstance(v, bool)
                or isinstance(v, float) and v.is_integer(), "an integer"),
    "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "boolean": (lambda v: isinstance(v, bool), "true or false"),
    "string[]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "string|string[]": (lambda v: isinstance(v, str) or isinstance(v, list) and all(isinstance(x, str) for x in v),
                        "a string or a list of strings"),
    "integer|string": (lambda v: isinstance(v, str) or isinstance(v, int) and not isinstance(v, bool),
                       "an integer or a string"),
    "object[]": (lambda v: isinstance(v, list), "a list of objects"),
    "number[]": (lambda v: isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                       for x in v), "a list of numbers"),
    "object": (lambda v: isinstance(v, dict), "an object"),
}


C_INT_MAX = 2 ** 31 - 1  # an integer field without a maximum of its own still fits C int


NAME_MAX, PATH_MAX = 255, 4096  # bytes of one file name and of a whole path (Linux; others allow less)
# names DSU turns into file names with something added (model + ".ckpt"/"-<sha8>.th", stem + temporary
# suffixes): they leave that much room
EXTENDED_NAMES, NAME_ROOM = frozenset({"model", "stems", "two_stems", "primary_stem", "single_stem"}), 32


def check_name(text: str, name: str, cmd: str) -> None:
    """Every string of the protocol is a path, a name that becomes part of one, or a choice: refuse
    what no file system takes before it reaches one (where it would be an OSError, not an answer)."""
    if "\0" in text:
        raise DSUError("bad_value", f"`{name}` of {cmd} contains a NUL character (\\u0000), which no "
                                    f"file name or model name may hold: {shown(text)}")
    most = NAME_MAX - NAME_ROOM if name in EXTENDED_NAMES else NAME_MAX
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > PATH_MAX or any(len(part.encode("utf-8", "surrogatepass")) > most for part in text.split("/")):
        raise DSUError("bad_value", f"`{name}` of {cmd} is longer than a path ({PATH_MAX} bytes) or holds a name "
                                    f"longer than {most} bytes (a file name has at most {NAME_MAX}): {shown(text)}")


def number_text(x: float) -> str:
    """A bound as docs and errors write it: 4194304, not 4.1943e+06."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    doc: str
    required: bool = False
    default: Any = None           # None: absent unless given (the doc says what absence means)
    choices: tuple = ()
    minimum: float | None = None
    aliases: tuple[str, ...] = ()  # other names accepted for the same field (older clients)
    maximum: float | None = None   # integers without one stop at C_INT_MAX
    any_case: bool = False         # a string choice matches in any case (the previous DSU lower-cased it)
    # a family option: (family, its default) per family that reads it; None: the loaded model's own
    families: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        assert self.type in TYPES, self.type

    def check(self, value: Any, cmd: str, name: str | None = None) -> Any:
        """`value` checked by type and range (`name`: the spelling the request used)."""
        name = name or self.name
        ok, described = TYPES[self.type]
        if not ok(value):
            raise DSUError("bad_value", f"`{name}` of {cmd} must be {described}, not {shown(value)}")
        if self.type == "integer" and isinstance(value, float):
            value = int(value)
        if self.any_case and isinstance(value, str) and value.lower() in self.choices:
            value = value.lower()
        for text in [value] if isinstance(value, str) else value if isinstance(value, list) else ():
            if isinstance(text, str):
                check_name(text, name, cmd)
        numbers = list(value) if self.type == "number[]" else [value] \
            if isinstance(value, (int, float)) and not isinstance(value, bool) else []
        names = [f"{name}[{i}]" for i in range(len(numbers))] if self.type == "number[]" else [name]
        for x, called in zip(numbers, names, strict=False):
            if isinstance(x, float) and not math.isfinite(x):
                raise DSUError("bad_value", f"`{called}` of {cmd} must be a finite number, not {x}")
        if self.choices and value not in self.choices \
                and not (self.type == "integer|string" and isinstance(value, int)):
            raise DSUError("bad_value", f"`{name}` of {cmd} must be one of "
                                        f"{', '.join(json.dumps(c) for c in self.choices)}, not {shown(value)}")
        for x, called in zip(numbers, names, strict=False):  # a list's numbers each in the field's range
            if self.minimum is not None and x < self.minimum:
                raise DSUError("bad_value", f"`{called}` of {cmd} must be at least {number_text(self.minimum)}, "
                                            f"not {shown(x)}")
            most = self.maximum if self.maximum is not None else C_INT_MAX if isinstance(x, int) else None
            if most is not None and x > most:
                raise DSUError("bad_value", f"`{called}` of {cmd} must be at most {number_text(most)}, not {shown(x)}"
                                            + (f" ({self.doc})" if self.maximum is not None else ""))
        return value


@dataclass(frozen=True)
class Command:
    name: str
    doc: str
    fields: tuple[Field, ...] = ()
    final: tuple[str, ...] = ()     # statuses that end the request (besides `error`)
    interim: tuple[str, ...] = ()   # statuses it may send before that
    immediate: bool = False         # answered at once, even while a job runs; else queued in order
    cancellable: bool = False       # `cancel` stops it at its next chunk while it runs (any queued job can be dropped)
    family_options: bool = False    # fields a model family understands pass through (see `options`)
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Message:
    status: str
    doc: str
    fields: tuple[Field, ...] = field(default_factory=tuple)


# the architectures of MSST checkpoints (`model_type`), which the msst family builds; declared here,
# below the families, for the torch-free rooms that name them too (the catalog's format, the MSST
# drop-in's help)
MSST_TYPES = ("bs_roformer", "mel_band_roformer", "scnet", "mdx23c")

ID = Field("id", "any", "echoed on every message the request causes; `cancel` names the job to stop by it")

# the request's model: which files, found where
MODEL_NAMING = (
    Field("model", "string", "a model name: `dsp` (built in), a Demucs signature or bag in `repo` or the models dir, "
                             "a file name in the models dir with or without its extension, as "
                             "python-audio-separator names models (`x.ckpt` with its YAML beside it, `x.pth`, "
                             "`x.onnx`, `htdemucs_ft.yaml`), ...; default: the worker's default model "
                             "(`dsu`: dsp, `dsu-demucs`: htdemucs, others: none)"),
    Field("model_path", "string", "a model file (.th, .yaml bag, .ckpt, .pth, .onnx, ...) instead of a name"),
    Field("config_path", "string", "the config (YAML) published with `model_path`, for families that have one; "
                                   "default: the one beside it (`<name>.yaml`, `<name>_config.yaml`, "
                                   "`config_<name>.yaml`, or as UVR and python-audio-separator pair them)"),
    Field("model_type", "string", "the family/architecture of `model_path` when its file name does not tell "
                                  f"(demucs, htdemucs, {', '.join(MSST_TYPES)}, apollo, ...)"),
    Field("repo", "string", "a folder of Demucs packages to look `model` up in instead of the models dir"),
    Field("models_dir", "string", "look `model` up in this folder instead of the worker's models dir",
          aliases=("model_file_dir",)),
)
# UVR's per-model settings, for a VR .pth / MDX-Net .onnx that DSU's tables do not know (or to override them):
# they decide how the file loads, so they are part of the model
UVR_SETTINGS = (
    Field("vr_model_param", "string", "VR: the band-parameter set, e.g. 4band_v2, 4band_v3, 1band_sr44100_hl512"),
    Field("primary_stem", "string", "VR/MDX: the stem the network predicts (Vocals, Instrumental, No Reverb, ...)"),
    Field("nout", "integer", "VR 5.1 networks: channels (e.g. 32, 48, 64)", minimum=1, maximum=1024),
    Field("nout_lstm", "integer", "VR 5.1 networks: LSTM width (e.g. 128)", minimum=1, maximum=4096),
    Field("is_karaoke", "boolean", "VR/MDX: a karaoke (lead vs backing vocals) model"),
    Field("is_bv_model", "boolean", "VR: a backing-vocals model"),
    Field("is_bv_model_rebalanced", "number", "VR: the backing-vocals rebalance factor", minimum=0, maximum=10),
    Field("compensate", "number", "MDX: the factor on the primary stem where it is taken from the mix to "
                                            "form the secondary (e.g. 1.035)", minimum=0, maximum=10),
    Field("mdx_dim_f_set", "integer", "MDX: frequency bins the network takes (e.g. 3072)", minimum=1, maximum=16384),
    Field("mdx_dim_t_set", "integer", "MDX: log2 of the frames per segment (8: 256 frames)", minimum=1, maximum=12),
    Field("mdx_n_fft_scale_set", "integer", "MDX: the STFT size (e.g. 7680)", minimum=2, maximum=32768),
)
MODEL_FIELDS = (*MODEL_NAMING, *UVR_SETTINGS)

OUTPUT_NAMES = Field("output_names", "object", "stem -> file base name (python-audio-separator's custom_output_names; "
                                             "the stem in either spelling, any case): that stem's file is "
                                             "`<name>.<ext>` in the folder the layout gives it",
                     aliases=("custom_output_names",))

SEPARATE_FIELDS = (
    Field("input", "string", "the audio file to separate (wav, flac, ogg, mp3, aiff; others through ffmpeg)",
          required=True),
    Field("output_dir", "string", "the folder the stems are written under", required=True, aliases=("output",)),
    *MODEL_FIELDS,
    Field("format", "string", "stem file format", default="wav", choices=("wav", "flac", "mp3")),
    Field("bit_depth", "integer", "16, 24 or 32 (float; flac writes 24); default: 16 for the demucs and uvr "
                                  "layouts (Demucs, MDX-Net, VR), 32 for the flat layout (MSST models, dsp)",
          choices=(16, 24, 32)),
    Field("stems", "string|string[]", "write only these stems (default: every stem the model makes)",
          aliases=("single_stem",)),
    Field("two_stems", "string", "write this stem and `no_<stem>` (the rest summed) only"),
    Field("sample_rate", "integer|string", "output sample rate: `model` (the model's), `input` (the input "
                                           "file's) or a number of Hz", default="model", choices=("model", "input"),
          minimum=1000, maximum=768000),
    Field("layout", "string", "where the stem files go under `output_dir`: a preset, `demucs` "
                              "(`{model}/{track}/{stem}.{ext}`), `flat` or `msst` (`{track}/{stem}.{ext}`), `uvr` or "
                              "`audio_separator` (`{track}_({Stem})_{model}.{ext}`, the model named up to its first "
                              "dot, as python-audio-separator does), or a template with those placeholders, "
                              "`{trackext}` and `/` for folders. `{stem}` is the model's spelling, `{Stem}` "
                              "python-audio-separator's. Default: the worker's (`dsu-audio-separator` uvr, "
                              "`dsu-bsroformer` flat, `dsu-demucs` demucs; `dsu`: the family's own, demucs for "
                              "Demucs, flat for MSST and dsp, uvr for VR and MDX-Net)"),
    OUTPUT_NAMES,
    Field("sanitize", "boolean", "read NaN/infinite input samples as 0 (reported in `done.warnings`) "
                                 "instead of refusing the file as `unsupported_audio`", default=False),
    Field("mp3_bitrate", "integer", "kbps of a `format` mp3 stem, constant bitrate (default 320, as demucs; "
                                    "at most 160 below 32 kHz)", minimum=8, maximum=320),
)

# Apollo's chunking, declared once: fields of `apollo` (absent: the model's own) and, with the previous
# DSU worker's defaults, family options of `separate` and ensembles (FAMILY_OPTIONS)
APOLLO_CHUNKS = (
    Field("chunk_seconds", "number", "length of the chunks the model sees; default: the model's", minimum=0.1,
          maximum=600),
    Field("overlap_seconds", "number", "crossfade between chunks; default: the model's", minimum=0, maximum=300,
          aliases=("chunk_overlap",)),
)
# an Apollo network's shape, for a checkpoint that comes without its config
APOLLO_ARCH = (
    Field("feature_dim", "integer", "the model's feature width when no config is given (e.g. 256, 384)", minimum=1,
          maximum=8192),
    Field("layer", "integer", "the model's number of layers when no config is given (e.g. 6)", minimum=1,
          maximum=256),
    Field("sr", "integer", "the model's sample rate when no config is given", minimum=1000, maximum=768000),
    Field("win", "integer", "the model's window in milliseconds when no config is given", minimum=1, maximum=1000),
)

# The options of the model families, checked by type and range before any family code sees them
# (`separate` and every command with `family_options`), and read by the families from here (defaults
# included: `families` pairs each family that reads an option with its default). One name may serve
# several families; the range here is the widest any of them accepts, and a family refuses what its
# loaded model cannot use (a Demucs `segment` longer than it was trained on, MSST's whole-number
# `overlap`, ...).
MODELS_OWN = None  # a family default that the loaded model gives (its config, its training)
FAMILY_TITLES = {"demucs": "Demucs", "msst": "MSST", "vr": "UVR VR", "mdx": "MDX-Net", "dsp": "dsp",
                 "apollo": "Apollo"}
# python-audio-separator's prefixed names (`vr_window_size`, `mdx_segment_size`) belong to its VR and
# MDX separators alone; any other alias to every family of its option
ALIAS_PREFIXES = {"vr_": "vr", "mdx_": "mdx"}


def used_by(**defaults) -> tuple[tuple[str, Any], ...]:
    """A family option's `families`: family=its default."""
    assert set(defaults) <= set(FAMILY_TITLES), defaults
    return tuple(defaults.items())


def _EVERY(default) -> dict[str, Any]:
    return dict.fromkeys(FAMILY_TITLES, default)


FAMILY_OPTIONS = (
    Field("shifts", "integer", "Demucs: random time shifts averaged (the shift trick); each one is a whole "
                               "extra pass", minimum=0, maximum=20, families=used_by(demucs=1)),
    Field("overlap", "number", "Demucs and MDX-Net: the fraction of a chunk shared with the next (below 1); "
                               "MSST: how many chunks overlap each sample (a whole number, at least 1)",
          minimum=0, maximum=64, aliases=("mdx_overlap",), families=used_by(demucs=0.25, msst=MODELS_OWN, mdx=0.25)),
    Field("clip_mode", "string", "Demucs: `rescale` scales a stem peaking past full scale down as a whole (the "
                                 "demucs CLI's default), `none` clips samples when written as integers",
          choices=("rescale", "none"), families=used_by(demucs="none")),
    Field("segment", "number", "Demucs and dsp: seconds per chunk (Demucs: at most what the model was "
                               "trained on)", minimum=0.01, maximum=600, families=used_by(demucs=MODELS_OWN, dsp=12.0)),
    Field("batch_size", "integer", "chunks per model call (all families)", minimum=1, maximum=64,
          aliases=("vr_batch_size", "mdx_batch_size"), families=used_by(demucs=1, msst=MODELS_OWN, vr=1, mdx=1)),
    Field("chunk_size", "integer", "MSST: samples per chunk (default: the model config's)", minimum=1,
          maximum=1 << 22, families=used_by(msst=MODELS_OWN)),
    Field("use_tta", "boolean", "MSST: also demix with channels swapped and polarity inverted, and average",
          families=used_by(msst=False)),
    Field("extract_instrumental", "boolean", "MSST: also write the mix minus the model's first stem",
          families=used_by(msst=False)),
    Field("backend", "string", "what runs the network between the spectrogram and its inverse: `torch`, "
                               "`openvino` (CPU), `auto` (on a CPU the one measured fastest for the family, "
                               "torch on CUDA and MPS)", choices=BACKENDS, families=used_by(**_EVERY("auto"))),
    Field("precision", "string", "the network's float type: `auto` is float32 on a CPU (exact) and float16 "
                                 "on CUDA when an MSST config trains with it; `bfloat16` is fast on CPUs with "
                                 "native bfloat16 (AMX, AVX512-BF16, Zen 4, Apple M2+); `float16` is CUDA/MPS "
                                 "only", choices=PRECISIONS, families=used_by(**_EVERY("auto"))),
    Field("window_size", "integer", "VR: STFT frames per network window (320, 512 or 1024 in UVR)", minimum=1,
          maximum=4096, aliases=("vr_window_size",), families=used_by(vr=512)),
    Field("aggression", "integer", "VR: how hard the primary stem is pulled out", minimum=-100, maximum=100,
          aliases=("vr_aggression",), families=used_by(vr=5)),
    Field("enable_tta", "boolean", "VR: test-time augmentation", aliases=("vr_enable_tta",),
          families=used_by(vr=False)),
    Field("enable_post_process", "boolean", "VR: remove vocal artefacts from the instrumental",
          aliases=("vr_enable_post_process", "vr_post_process"), families=used_by(vr=False)),
    Field("post_process_threshold", "number", "VR: the post-process threshold (0.1 to 0.3 in UVR)", minimum=0,
          maximum=1, aliases=("vr_post_process_threshold",), families=used_by(vr=0.2)),
    Field("high_end_process", "boolean", "VR: mirror the high end the band set cuts",
          aliases=("vr_high_end_process",), families=used_by(vr=False)),
    Field("segment_size", "integer", "MDX-Net: STFT frames per network call", minimum=2, maximum=4096,
          aliases=("mdx_segment_size",), families=used_by(mdx=256)),
    Field("hop_length", "integer", "MDX-Net: the STFT hop", minimum=1, maximum=8192, aliases=("mdx_hop_length",),
          families=used_by(mdx=1024)),
    Field("enable_denoise", "boolean", "MDX-Net: run the network on the mix and its negation and average",
          aliases=("mdx_enable_denoise",), families=used_by(mdx=False)),
    # audio-separator's normalization_threshold: for MDX-Net a louder mix is scaled down to it before
    # demixing, and (both families) so is each stem written
    Field("normalization_threshold", "number", "MDX-Net and VR: a louder mix and stem are scaled down to this "
                                               "peak (above 0)", minimum=0, maximum=1, aliases=("normalization",),
          families=used_by(vr=0.9, mdx=0.9)),
    # the previous DSU worker's `apollo` defaults; no `chunk_overlap` alias among the family options
    replace(APOLLO_CHUNKS[0], doc="Apollo: seconds per chunk", families=used_by(apollo=7.0)),
    replace(APOLLO_CHUNKS[1], doc="Apollo: crossfade between chunks", aliases=(), families=used_by(apollo=0.5)),
)

# `apollo`: the restore job's fields
RESTORE_FIELDS = (
    Field("input", "string", "the audio file to restore", required=True),
    Field("output", "string", "the restored file to write (its extension sets the format)", required=True,
          aliases=("output_path",)),
    Field("model", "string", "an Apollo model by name, looked up as `separate` looks names up (the models dir, "
                             "then the catalog's download hint); give it or `model_path`"),
    Field("model_path", "string", "the Apollo checkpoint (.ckpt/.bin) instead of a name"),
    Field("models_dir", "string", "look `model` up in this folder instead of the worker's models dir",
          aliases=("model_file_dir",)),
    Field("config_path", "string", "its YAML config"),
    *APOLLO_CHUNKS,
    Field("format", "string", "the output format when the extension does not say", choices=("wav", "flac", "mp3")),
    Field("bit_depth", "integer", "16, 24 or 32 (float)", choices=(16, 24, 32)),
    *APOLLO_ARCH,
    Field("sanitize", "boolean", "read NaN/infinite input samples as 0 (reported in `done.warnings`) "
                                 "instead of refusing the file as `unsupported_audio`", default=False),
    # the family options' own fields: Apollo runs on the backends the families do
    *(replace(f, families=()) for f in FAMILY_OPTIONS if f.name in ("backend", "precision")),
)

FAMILY_OPTION_NAMES = {name: f for f in FAMILY_OPTIONS for name in (f.name, *f.aliases)}


def option_names(f: Field, family: str) -> tuple[str, ...]:
    """The names `family` reads option `f` under: its own, then its aliases (other families' prefixed
    ones left out)."""
    def owner(alias: str) -> str:
        return next((fam for prefix, fam in ALIAS_PREFIXES.items() if alias.startswith(prefix)), family)
    return (f.name, *(a for a in f.aliases if owner(a) == family))


def options_of(family: str) -> tuple[Field, ...]:
    """The options `family` reads, in the table's order."""
    return tuple(f for f in FAMILY_OPTIONS if family in dict(f.families))


def _options_by_family() -> str:
    """What `separate`'s doc says of the family options: each family with the options it reads."""
    return "; ".join(f"{title} " + ", ".join(f"`{f.name}`" for f in options_of(family))
                     for family, title in FAMILY_TITLES.items())


ENSEMBLE_ALGORITHMS = ("avg_wave", "median_wave", "min_wave", "max_wave", "avg_fft", "median_fft", "min_fft",
                       "max_fft", "uvr_max_spec", "uvr_min_spec", "ensemble_wav")

MAX_WEIGHT = 1e6  # weights are ratios: this bound keeps their sum, and every blend, within float32

ENSEMBLE_FIELDS = (
    Field("input", "string", "the audio file to separate with every member (with `models` or `preset`)"),
    Field("output_dir", "string", "the folder the blended stems are written under (with `models`)"),
    Field("models", "object[]", "the members, at least 2: each {\"model\": ...} or {\"model_path\": ..., "
                                "\"config_path\": ...} with the model fields of `separate`, its own family options "
                                "(`shifts`, `overlap`, ...) and `stem_map` (its stem -> ensemble stem, e.g. "
                                "{\"no_vocals\": \"instrumental\"}); a plain string is a model name"),
    Field("preset", "string", "a python-audio-separator ensemble preset (members + algorithm), e.g. "
                              "vocal_balanced, instrumental_clean; its models are looked up by name"),
    Field("files", "string[]", "instead of `models`: stem files to blend into `output` (at least 2)"),
    Field("output", "string", "with `files`: the file to write (its extension sets the format)"),
    Field("algorithm", "string", "how stems are blended (MSST's ensemble.py and python-audio-separator's "
                                 "ensembler); default avg_wave, or the preset's", choices=ENSEMBLE_ALGORITHMS),
    Field("weights", "number[]", "one weight per member or file (avg_wave and avg_fft use them; only their "
                                 "ratios count); default equal", minimum=0, maximum=MAX_WEIGHT),
    Field("stems", "string|string[]", "the ensemble stems to write (default: every stem a member makes); "
                                      "names match case-insensitively, no_vocals/inst/`other` of a 2-stem "
                                      "vocal model are `instrumental`"),
    Field("name", "string", "the ensemble's name in output paths (default: preset_<preset> or "
                            "custom_ensemble_<members>, as python-audio-separator)"),
    Field("layout", "string", "output layout: demucs, flat (msst), uvr (audio_separator); default: the "
                              "worker's (dsu-audio-separator uvr, dsu-demucs demucs, others flat)"),
    OUTPUT_NAMES,
    Field("reference", "string", "whose median_fft to follow: msst (numpy's complex median) or "
                                 "audio_separator (medians of real and imaginary parts); default "
                                 "audio_separator for dsu-audio-separator, msst otherwise",
          choices=("msst", "audio_separator")),
    Field("format", "string", "output format (with `models`)", default="wav", choices=("wav", "flac", "mp3")),
    Field("bit_depth", "integer", "16, 24 or 32 (float; the default)", choices=(16, 24, 32)),
)

DENOISE_FIELDS = (
    Field("input", "string", "the audio file to denoise", required=True),
    Field("noise_profile", "string", "a recording of the noise alone (any length; averaged to mono and "
                                     "resampled to the input's rate)", required=True, aliases=("noise_path",)),
    Field("output", "string", "the file to write (wav, flac or mp3 by its extension); default "
                              "`<input_dir>/<base>_denoised.wav`, as the previous DSU", aliases=("output_path",)),
    Field("subtraction_factor", "number", "how much of the noise estimate is subtracted (0: none, 1: all; "
                                          "more over-subtracts)", default=0.9, minimum=0, maximum=4),
    Field("attack_time", "number", "seconds the level the noise follows takes to rise", default=0.01, minimum=0,
          maximum=10),
    Field("release_time", "number", "seconds it takes to fall (slower pumps less); default: the `mode`'s",
          minimum=0, maximum=10),
    Field("mode", "string", "the release preset: default 0.1 s (vocals, melodic), drums 0.3 s (kicks, "
                            "percussion), slow 0.5 s (pads, sustained sounds)", default="default",
          choices=("default", "drums", "slow"), any_case=True),
    Field("bit_depth", "integer", "16, 24 or 32 (float)", default=16, choices=(16, 24, 32)),
)

COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("ping", "is the worker alive (answered even while a job runs)", (ID,), final=("pong",), immediate=True),
    Command("get_status", "what the worker is doing: the running job, the queue, the cache", (ID,),
            final=("status",), immediate=True),
    Command("list_models", "the models the worker can find: built in and in the models dir", (ID,),
            final=("models",), immediate=True),
    Command("list_cached", "the loaded models in the cache, least recently used first", (ID,),
            final=("cached_models",), immediate=True),
    Command("cancel", "stop the job whose `id` is given: a queued job of any kind is dropped, a running "
                      "separate/apollo/ensemble/denoise stops at its next chunk (download_model at its next block); "
                      "without `id`, the running job. That job "
                      "then answers error `cancelled`",
            (Field("id", "any", "the `id` of the job to stop"),), final=("cancelling",), immediate=True),
    Command("load_model", "load a model into the cache (or find it there). dsu-denoise, whose `denoise` needs no "
                          "model, answers one naming none with model `envelope_matched` (family `denoise`, stem "
                          "`denoised`), as the previous DSU's did", (ID, *MODEL_FIELDS),
            final=("model_loaded",), interim=("loading_model", "cache_evicted")),
    Command("preload_model", "like load_model, for warming the cache ahead of jobs", (ID, *MODEL_FIELDS),
            final=("model_preloaded",), interim=("loading_model", "cache_evicted")),
    Command("separate", "separate one file into stem files. It also takes the options of the model's family "
                        "(with python-audio-separator's `vr_`/`mdx_` prefixes too): " + _options_by_family()
                        + ". Fields the model does not use are ignored and listed in `done` as `ignored`",
            (ID, *SEPARATE_FIELDS), final=("done",),
            interim=("loading_model", "cache_evicted", "separating", "preparing", "progress", "cancelling"),
            cancellable=True, family_options=True),
    Command("apollo", "restore one file with an Apollo model (lossy-codec and band-limit repair)",
            (ID, *RESTORE_FIELDS), final=("done",),
            interim=("loading_model", "cache_evicted", "restoring", "preparing", "progress", "cancelling"),
            cancellable=True, aliases=("restore",)),
    Command("ensemble", "separate one file with several models and blend their stems as they are produced "
                        "(or blend stem `files`). Members are loaded into the cache (grown for the job when "
                        "smaller) and stay there; fields members' families understand apply to every member",
            (ID, *ENSEMBLE_FIELDS), final=("done",),
            interim=("loading_model", "cache_evicted", "ensembling", "preparing", "progress", "cancelling"),
            cancellable=True, family_options=True),
    Command("set_storage_type", "how model files are read from now on, as the previous DSU's workers took it: "
                                "`ssd` memory-maps a weight file as it loads (torch's zip format; other files "
                                "are read whole), `hdd` reads it whole first (DSU's default: fewer random reads)",
            (ID, Field("type", "string", "the storage the models dir is on", default="ssd", choices=("ssd", "hdd"),
                   any_case=True)),
            final=("storage_configured",), immediate=True),
    Command("denoise", "reduce noise that follows the music's loudness (hiss that pumps with it) against a "
                       "recording of it: envelope-matched spectral subtraction, as the previous DSU's "
                       "dsu-denoise; no model. The noise's spectrum is scaled per frame by the input's level "
                       "and subtracted. `done` names the one file written",
            (ID, *DENOISE_FIELDS), final=("done",), interim=("denoising", "progress", "cancelling"),
            cancellable=True),
    Command("clear_cache", "drop every cached model", (ID,), final=("cache_cleared",)),
    Command("set_cache_size", "change how many models the cache keeps (0 disables it); evicts the oldest",
            (ID, Field("n", "integer", "models to keep", required=True, minimum=0, maximum=1000,
                   aliases=("max_cached_models",)),
             Field("max_memory_mb", "number", "memory the cached models may hold, MiB", minimum=0, maximum=2 ** 30)),
            final=("cache_size_updated",), interim=("cache_evicted",)),
    Command("exit", "finish the jobs queued before it, then exit", (ID,), final=("exiting",)),
    Command("clean", "remove what killed DSU processes left: partial files under `dir` whose owner process is "
                     "gone (never a live job's; one of another machine or PID namespace, or of an older DSU, "
                     "once nothing wrote to it for a day), and DSU's decoded input copies in the temp dir "
                     "by the same rule",
            (ID, Field("dir", "string", "the folder to clean, with its subfolders", required=True)),
            final=("cleaned",)),
    Command("download_model", "download a catalog model into the models dir: every file streamed to a temporary "
                              "name, resumed after a dropped connection, its size and sha256 (or the hash pinned "
                              "by its first download) checked and the file opened by its family's loader before "
                              "it is renamed into place. `progress` carries the bytes",
            (ID, Field("model", "string", "the catalog name (see `dsu models list --available`)", required=True),
             Field("models_dir", "string", "install here instead of the worker's models dir",
                   aliases=("model_file_dir",)),
             Field("catalog", "string", "a catalog file or URL instead of $DSU_CATALOG or the shipped one"),
             Field("read_timeout", "number", "seconds a read may stall before it is retried", default=30.0, minimum=0.1,
                   maximum=3600),
             Field("retries", "integer", "network failures in a row before giving up", default=5, minimum=0,
                   maximum=100)),
            final=("model_downloaded",), interim=("progress", "cancelling"), cancellable=True),
)}

ALIASES = {alias: c.name for c in COMMANDS.values() for alias in c.aliases}

# One `separate` per worker name with the files its default layout writes (docs/protocol.md shows them)
LAYOUT_EXAMPLES = (
    ("dsu-audio-separator", {"model": "model_bs_roformer_ep_317_sdr_12.9755.ckpt", "models_dir": "/models"},
     "/home/me/out", ["song_(Vocals)_model_bs_roformer_ep_317_sdr_12.wav",
                      "song_(Instrumental)_model_bs_roformer_ep_317_sdr_12.wav"]),
    ("dsu-bsroformer", {"model_path": "vocals.ckpt", "config_path": "vocals.yaml"},
     "/home/me/out/song", ["vocals.wav", "other.wav"]),
    ("dsu-demucs", {"model": "htdemucs"}, "/home/me/out/htdemucs/song",
     ["drums.wav", "bass.wav", "other.wav", "vocals.wav"]),
    ("dsu", {"model": "UVR-MDX-NET-Inst_HQ_3"}, "/home/me/out",
     ["song_(Instrumental)_UVR-MDX-NET-Inst_HQ_3.wav", "song_(Vocals)_UVR-MDX-NET-Inst_HQ_3.wav"]),
    ("dsu", {"model": "htdemucs", "layout": "{stem}/{track}.{ext}"}, "/home/me/out",
     ["drums/song.wav", "bass/song.wav", "other/song.wav", "vocals/song.wav"]),
)

_NAME = Field("model", "string", "the model's name")
_STEMS = Field("stems", "string[]", "its stems")
_FAMILY = Field("family", "string", "its family (dsp, demucs, msst, ...)")
_DEVICE = Field("device", "string", f"{', '.join(KINDS[:-1])} or {KINDS[-1]}")

MESSAGES: dict[str, Message] = {m.status: m for m in (
    Message("loading", "first line: the worker started and is importing its libraries"),
    Message("ready", "the worker answers commands from now on", (
        _DEVICE,
        Field("threads", "integer", "intra-op CPU threads"),
        Field("cache_enabled", "boolean", "models stay loaded between jobs"),
        Field("max_cached_models", "integer", "how many"),
        Field("max_cache_memory_mb", "number", "memory the cached models may hold"),
        Field("default_model", "string", "the model used when a request names none (null: none)"),
        Field("worker", "string", "the name the worker was started as"),
        Field("version", "string", "DSU's version"),
        Field("protocol", "integer", f"protocol version ({PROTOCOL})"),
        Field("device_warning", "string", "present when the device asked for was not available"))),
    Message("pong", "answer to ping", (ID, Field("model_loaded", "string", "the last model used (null: none)"))),
    Message("status", "answer to get_status", (
        ID, Field("model_loaded", "string", "the last model used"), _DEVICE,
        Field("ready", "boolean", "always true"), Field("busy", "boolean", "a job is running"),
        Field("job", "object", "the running job: `id`, `cmd`, `progress` (null when idle)"),
        Field("queued", "integer", "jobs waiting"), Field("cached_models", "string[]", "names in the cache"),
        Field("cache_size", "integer", "models in the cache"),
        Field("max_cache_size", "integer", "max_cached_models"),
        Field("threads", "integer", "intra-op CPU threads"))),
    Message("models", "answer to list_models", (
        ID, Field("models", "string[]", "model names"),
        Field("details", "object[]", "per model: `name`, `family`, `stems`, and what its family adds"),
        Field("catalog", "object[]", "the models DSU can download by name (`download_model`), each with "
                                     "`name`, `type`, `family`, `stems`, `size`, `installed` (in the worker's "
                                     "models dir), `sdr`, `purpose`, `aliases`, `description` (null when "
                                     "$DSU_CATALOG is a URL: not fetched by this immediate command)"))),
    Message("cached_models", "answer to list_cached", (
        ID, Field("models", "object[]", "per cached model: `model`, `family`, `stems`, `bytes`, `active`"),
        Field("count", "integer", "models in the cache"), Field("max", "integer", "max_cached_models"),
        Field("bytes", "integer", "memory held"), Field("max_bytes", "integer", "the memory bound"))),
    Message("cancelling", "answer to cancel: the job will stop; its own `error` `cancelled` follows", (ID,)),
    Message("loading_model", "a model is being loaded (not cached)", (ID, _NAME)),
    Message("model_loaded", "answer to load_model", (
        ID, _NAME, _STEMS, _FAMILY, Field("cached", "boolean", "it was already loaded"))),
    Message("model_preloaded", "answer to preload_model", (
        ID, _NAME, _STEMS, _FAMILY, Field("cached", "boolean", "it was already loaded"))),
    Message("cache_evicted", "a model was dropped from the cache to respect its bounds", (ID, _NAME)),
    Message("separating", "a separation started", (ID, Field("input", "string", "the input as given"),
                                                   _NAME)),
    Message("preparing", "backend openvino: a network is converted (first use of a model at this chunk "
                         "size, seconds to minutes) or loaded from the cache under the models dir, then compiled",
            (ID, Field("backend", "string", "openvino"),
             Field("stage", "string", "converting, loading (from the cache) or ready"),
             Field("core", "string", "the network: model (family), or a bag member's"),
             Field("elapsed", "number", "seconds since this network's preparation began"))),
    Message("restoring", "a restoration started", (ID, Field("input", "string", "the input as given"), _NAME)),
    Message("denoising", "a denoise started", (ID, Field("input", "string", "the input as given"))),
    Message("progress", "at least once per processed chunk", (
        ID, Field("progress", "number", "0..1"), Field("percent", "integer", "0..100 (older clients)"),
        Field("file", "string", "download_model: the file being fetched"),
        Field("bytes_done", "integer", "download_model: its bytes so far"),
        Field("bytes_total", "integer", "download_model: its size (null when the server does not say)"),
        Field("speed", "number", "download_model: bytes per second"),
        Field("retry", "string", "download_model: why the transfer is retried, and when (absent otherwise)"),
        Field("member", "string", "ensemble: the member model running now"))),
    Message("model_downloaded", "answer to download_model: every file is installed and verified", (
        ID, _NAME, Field("models_dir", "string", "absolute"), Field("paths", "string[]", "the model's files, absolute"),
        Field("downloaded", "integer", "bytes fetched now (0: it was installed already)"),
        Field("size", "integer", "bytes of all its files"),
        Field("pinned", "string[]", "files whose first-download hash was pinned in dsu-lock.json"),
        Field("elapsed", "number", "seconds"))),
    Message("ensembling", "an ensemble started", (
        ID, Field("input", "string", "the input as given"), Field("model", "string", "the ensemble's name"),
        Field("members", "string[]", "the members that run"), Field("algorithm", "string", "the blend"))),
    Message("done", "the job finished; every file it names is complete", (
        ID, Field("elapsed", "number", "seconds from the request being taken from the queue"),
        Field("output_dir", "string", "absolute: the folder holding `files` (OUT/<model>/<track> for the demucs "
                                      "layout, OUT/<track> for flat, OUT for uvr), so joining the two names "
                                      "each file"),
        Field("files", "string[]", "the files written, relative to `output_dir` (their names, unless a "
                                   "`layout` template puts stems in different folders)"),
        Field("paths", "string[]", "their absolute paths"), Field("stems", "string[]", "the stems written"),
        _NAME, Field("model_from_cache", "boolean", "the model was already loaded"),
        Field("backend", "string", "what ran the network: torch or openvino (torch where OpenVINO could not "
                                   "convert it, said in `warnings`)"),
        Field("precision", "string", "the network's float type: float32, float16 or bfloat16"),
        Field("ignored", "string[]", "request fields the model does not use (only when there are any)"),
        Field("warnings", "string[]", "what was wrong with the input but did not stop the job: a truncated "
                                      "file read as far as it goes, NaN samples read as 0 with `sanitize`; "
                                      "bfloat16 emulated, a network that ran on torch, a converted network "
                                      "rebuilt (only when there are any)"),
        Field("members", "object[]", "ensemble: per member `model`, `family`, `stems`, `blended`, "
                                     "`model_from_cache` (with `files`: `file`)"),
        Field("algorithm", "string", "ensemble: the blend"),
        Field("weights", "number[]", "ensemble: the weights given (null: equal)"))),
    Message("cleaned", "answer to clean", (
        ID, Field("dir", "string", "the folder cleaned, absolute"),
        Field("removed", "string[]", "absolute paths of the files removed"),
        Field("count", "integer", "how many"))),
    Message("cache_cleared", "answer to clear_cache",
            (ID, Field("models_cleared", "integer", "how many were dropped"))),
    Message("cache_size_updated", "answer to set_cache_size", (
        ID, Field("max_cached_models", "integer", "the new bound"),
        Field("cache_enabled", "boolean", "false when it is 0"),
        Field("max_cache_memory_mb", "number", "the memory bound"))),
    Message("storage_configured", "answer to set_storage_type", (
        ID, Field("type", "string", "ssd or hdd"),
        Field("mmap_enabled", "boolean", "weight files are memory-mapped as they load"),
        Field("mmap_supported", "boolean", "this torch can map weight files (torch.load's `mmap`)"))),
    Message("exiting", "last line before the worker exits with code 0", (
        ID, Field("reason", "string", "exit (command), eof (stdin closed), signal (SIGTERM/SIGINT)"))),
    Message("error", "the request failed; the worker goes on", (
        ID, Field("code", "string", "one of the error codes"),
        Field("message", "string", "what went wrong, what to do"),
        Field("input", "string", "the request's `input` as given, when it had one (a request without `id` "
                                 "is told apart by it)"))),
)}

ERRORS: dict[str, str] = {
    "bad_json": "the line is not a JSON object",
    "unknown_command": "`cmd` names no command",
    "missing_field": "a required field is absent",
    "bad_value": "a field has the wrong type or an unusable value",
    "input_not_found": "the input file does not exist",
    "unsupported_audio": "the input cannot be decoded (not audio, damaged, truncated, no frames)",
    "model_not_found": "no model of that name or path (or a file it needs is missing)",
    "config_mismatch": "the checkpoint does not fit its config (first missing/unexpected keys named)",
    "cancelled": "the job was cancelled (by `cancel`, a timeout or the worker stopping); nothing of it was kept",
    "out_of_memory": "the device ran out of memory",
    "internal": "a bug or an unexpected failure; the message and the worker's stderr tell more",
    "output_not_writable": "the output folder cannot take new files (read-only, a system folder, a file in "
                           "its place); checked before the model loads, and a job's writes that fail (a full "
                           "disk, its folder removed or read-only meanwhile) end with it; nothing of it was kept",
    "checksum_mismatch": "a downloaded file is not the published one (size, sha256 or pinned hash); nothing was kept",
    "download_failed": "a download failed (HTTP error, or the network past its retries); a partial file is kept "
                       "to resume",
}
assert tuple(ERRORS) == CODES, "errors.CODES and spec.ERRORS must list the same codes"


def command_of(request: Any) -> Command:
    """The command a parsed request line asks for."""
    if not isinstance(request, dict):
        raise DSUError("bad_json", f"a request is one JSON object per line, not {type(request).__name__}")
    if "cmd" not in request:
        raise DSUError("missing_field", "the request has no `cmd`; commands: " + ", ".join(COMMANDS))
    name = request["cmd"]
    if not isinstance(name, str) or ALIASES.get(name, name) not in COMMANDS:
        raise DSUError("unknown_command", f"unknown command {json.dumps(name)}; commands: "
                                          + ", ".join([*COMMANDS, *ALIASES]))
    return COMMANDS[ALIASES.get(name, name)]


def validate(command: Command, request: dict) -> tuple[dict, dict]:
    """(the command's fields under their main names, with defaults; the other fields of the request)."""
    values, rest = {}, {k: v for k, v in request.items() if k != "cmd"}
    for f in command.fields:
        names = [n for n in (f.name, *f.aliases) if n in rest]
        given = [rest.pop(n) for n in names]
        value = next((v for v in given if v is not None), None)
        if f.name == "id" and "id" in names:
            values["id"] = value
            continue
        if value is None:
            if f.required:
                raise DSUError("missing_field", f"{command.name} needs `{f.name}`: {f.doc}")
            if f.default is not None:
                values[f.name] = f.default
            continue
        values[f.name] = f.check(value, command.name)
    if command.family_options:
        check_family_options(command, rest)
    return values, rest


def check_family_options(command: Command, options: dict) -> None:
    """Check, in place, the family options among a request's other fields, under the names given;
    null is absence, as for the command's own fields."""
    for name, value in list(options.items()):
        declared = FAMILY_OPTION_NAMES.get(name)
        if declared is None:
            continue
        if value is None:
            del options[name]
        else:
            options[name] = declared.check(value, command.name, name)


def timeout_kind(command: Command) -> str:
    """How long a client waits for an answer before it takes the worker for stuck: `quick` (answered
    at once), `job` (sends progress: the silence between messages counts) or `load` (a queued command
    that may take minutes without a word)."""
    return "quick" if command.immediate else "job" if command.cancellable else "load"


def timeout_kinds() -> dict[str, str]:
    """`timeout_kind` per command and alias."""
    return {name: timeout_kind(COMMANDS[ALIASES.get(name, name)]) for name in [*COMMANDS, *ALIASES]}


def final_statuses() -> dict[str, list[str]]:
    """Per command and alias, the statuses that end it (clients wait for one of these or `error`)."""
    out = {name: list(c.final) for name, c in COMMANDS.items()}
    out.update({alias: list(COMMANDS[name].final) for alias, name in ALIASES.items()})
    return out
