"""UVR's MDX-Net models: a `.onnx` network that maps a stereo spectrogram [batch, 4, dim_f, dim_t]
(left real/imag, right real/imag, the first dim_f bins of an n_fft STFT with hop 1024) to the
spectrogram of its primary stem, run through onnxruntime (`backend: torch`: this family has no torch
network, onnxruntime is its baseline) or OpenVINO (`backend: openvino`: OpenVINO reads the ONNX file
itself and compiles it with the job's precision and threads).

A model is named by `model_path` (any `.onnx`; or any file with `model_type: "mdx"`) or by `model`,
the stem of a `.onnx` file in the models dir. Its n_fft / dim_f / dim_t / compensate / primary stem
come from UVR's model-data table by the file's md5 (`dsu.families.uvr`), with the request's UVR
overrides on top; dim_f and dim_t are read from the network's input when it fixes them and neither
says.

Inference reproduces python-audio-separator's MDXSeparator: the mix is scaled down to a 0.9 peak
when louder, cut into chunks of hop * (segment_size - 1) samples every (1 - overlap) of a chunk over
the mix with n_fft / 2 zeros in front and zeros behind up to whole chunks, each chunk weighted by a
Hann window over the part of it that lies inside that padded mix, the first three STFT bins zeroed
before the network, the network's output (or, with `enable_denoise`, the mean of it and of the
negated network on the negated input) turned back into audio, multiplied by the mix's original
peak (audio-separator does this also when it did not scale the mix, so the primary stem of a mix
quieter than 0.9 comes out scaled by its peak; kept, since matching it is the point). The secondary
stem is the scaled mix minus `compensate` times the primary. Each stem file is scaled down to a
0.9 peak when louder (`peak_limit`, done by the writer). Not reproduced: audio-separator's 16-bit
conversion by truncating x * 32767 (DSU's writer rounds)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .. import backends, memory
from ..engine import Chunk, Pass, Scaled, Signal, iter_blocks
from ..errors import DSUError
from . import uvr
from .base import Family, LoadedModel, ModelRef, make_ref, option_names, read_options

SAMPLERATE = 44100
ZEROED_BINS = 3       # UVR silences the lowest STFT bins before the network
# the request's UVR names -> the table's keys (mdx_dim_t_set is log2 of the frames)
OVERRIDES = {"primary_stem": "primary_stem", "compensate": "compensate", "mdx_dim_f_set": "dim_f",
             "mdx_dim_t_set": "dim_t", "mdx_n_fft_scale_set": "n_fft", "is_karaoke": "karaoke"}


# ---- spectrograms as the network sees them ----------------------------------------------------------

def spectrogram(audio: Tensor, n_fft: int, hop: int, dim_f: int, window: Tensor) -> Tensor:
    """[batch, 2, n] -> [batch, 4, dim_f, frames]: per channel its real then imaginary part."""
    spec = torch.stft(audio.reshape(-1, audio.shape[-1]), n_fft, hop, window=window, center=True,
                      return_complex=True)
    spec = rearrange(torch.view_as_real(spec), "(b c) f t ri -> b (c ri) f t", b=audio.shape[0])
    return spec[:, :, :dim_f]


def waveform(spec: Tensor, n_fft: int, hop: int, window: Tensor) -> Tensor:
    """The inverse of `spectrogram`, the bins above dim_f taken as zero: [batch, 2, hop * (frames - 1)]."""
    spec = F.pad(spec, (0, 0, 0, n_fft // 2 + 1 - spec.shape[2]))
    spec = rearrange(spec, "b (c ri) f t -> (b c) f t ri", ri=2).contiguous()
    audio = torch.istft(torch.view_as_complex(spec), n_fft, hop, window=window, center=True)
    return rearrange(audio, "(b c) n -> b c n", b=spec.shape[0] // 2)


# ---- audio-separator's demix loop as engine chunks -----------------------------------------------

def hann(n: int) -> Tensor:
    """numpy's symmetric Hann window (zero at both ends; [1] for one sample), in float32."""
    return torch.hann_window(n, periodic=False, dtype=torch.float64).float()


def demix_chunks(length: int, chunk_size: int, trim: int, overlap: float) -> list[Chunk]:
    """The reference's chunks over a `length`-sample mix: its loop runs over the mix with `trim`
    zeros in front and zeros behind to a whole number of generated spans plus `trim`, every
    int((1 - overlap) * chunk_size) samples; a chunk cut short by the end of that padded mix gets a
    Hann window of its cut length (no window at all when overlap is 0). Chunks start at `-trim` on
    the mix's timeline (the engine reads zeros before it) and keep only what lands on the mix."""
    gen_size = chunk_size - 2 * trim
    padded = trim + length + gen_size + trim - length % gen_size
    step = int((1 - overlap) * chunk_size)
    windows: dict[int, Tensor] = {}  # one per size, shared: a long file has thousands of chunks
    chunks = []
    for start in range(0, padded, step):
        end = min(start + chunk_size, padded)
        if end - start not in windows:
            windows[end - start] = hann(end - start) if overlap != 0 else torch.ones(end - start)
        window = windows[end - start]
        lo, hi = max(start, trim), min(end, trim + length)
        if hi <= lo:  # wholly in the padding
            continue
        chunks.append(Chunk(start=start - trim, size=chunk_size, keep=lo - start, out_start=lo - trim,
                            out_size=hi - lo, window=_part(window, lo - start, hi - start)))
    return chunks


def _part(window: Tensor, lo: int, hi: int) -> Tensor:
    """window[lo:hi], the shared tensor itself when that is all of it (a view costs most of a chunk)."""
    return window if lo == 0 and hi == len(window) else window[lo:hi]




def peak_of(signal: Signal) -> float:
    return max((float(block.abs().max()) for block in iter_blocks(signal) if block.numel()), default=0.0)


# ---- onnxruntime ---------------------------------------------------------------------------------

def providers_for(device: torch.device) -> list[str]:
    """The execution providers for the worker's device, as audio-separator picks them: CUDA for a
    CUDA device, CoreML for Apple's, when this onnxruntime has them; the CPU always last."""
    import onnxruntime as ort
    wanted = {"cuda": "CUDAExecutionProvider", "mps": "CoreMLExecutionProvider"}.get(device.type)
    found = [wanted] if wanted is not None and wanted in ort.get_available_providers() else []
    return found + ["CPUExecutionProvider"]


def open_session(model: str | bytes, providers: list[str], name: str):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = torch.get_num_threads()  # the worker's --threads, like torch
    options.inter_op_num_threads = 1
    # onnxruntime's threads otherwise busy-wait after each call, taking the cores from the torch work
    # between calls (STFTs, other ensemble members) on a machine with few of them
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for a bad file
        raise DSUError("bad_value", f"cannot load {name} as an ONNX model: {str(e).splitlines()[0][:300]}; "
                                    "is it a complete UVR MDX-Net .onnx file?") from None


def free_frames(path: str, providers: list[str], name: str):
    """A session of the model whose batch and frame axes accept any size, for a segment_size other
    than the frames the file fixes (audio-separator converts the model to torch for this). Needs the
    `onnx` package to rewrite the declared shapes."""
    try:
        import onnx
    except ModuleNotFoundError:
        return None
    proto = onnx.load(path)
    del proto.graph.value_info[:]  # shape hints for the fixed size; onnxruntime infers them again
    for value in [*proto.graph.input[:1], *proto.graph.output[:1]]:
        dims = value.type.tensor_type.shape.dim
        for axis, label in ((0, "batch"), (len(dims) - 1, "frames")):
            dims[axis].ClearField("dim_value")
            dims[axis].dim_param = label
    return open_session(proto.SerializeToString(), providers, name)


def fixed(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


# ---- the loaded model ----------------------------------------------------------------------------

class MDXModel(LoadedModel):
    family = "mdx"
    options = option_names("mdx")

    def __init__(self, name: str, path: str, session, data: dict, device: torch.device):
        self.name, self.path, self.device = name, path, device
        self.samplerate, self.audio_channels = SAMPLERATE, 2
        self.session = session
        self.input_name = session.get_inputs()[0].name
        shape = session.get_inputs()[0].shape
        self.fixed_batch, self.fixed_frames = fixed(shape[0]), fixed(shape[3])
        self.n_fft, self.dim_f, self.dim_t = int(data["n_fft"]), int(data["dim_f"]), int(data["dim_t"])
        self.compensate = float(data.get("compensate", 1.0))
        primary = str(data.get("primary_stem") or "Vocals")
        self.stems = [primary, uvr.secondary_stem(primary)]
        self.stft_device = device if device.type == "cuda" else torch.device("cpu")
        self._free_session = None

    def nbytes(self) -> int:
        # onnxruntime holds the weights once, about the file's size; each OpenVINO compile once more
        return os.path.getsize(self.path) * (1 + len(vars(self).get("_compiled", ())))

    def memory_estimate(self, length: int, **options):
        """One model call holds `batch_size` spectrograms of [4, dim_f, segment_size] and the network's
        activations; the overlap-add about two chunks of both stems."""
        opts = read_options("mdx", options)
        segment, batch, hop = opts["segment_size"], opts["batch_size"], opts["hop_length"]
        chunk = hop * (segment - 1)
        spec = 4 * max(self.dim_f, self.n_fft // 2 + 1) * segment * memory.FLOAT
        host = memory.span_bytes(2, 2, chunk) + 4 * chunk * 2 * memory.FLOAT
        return memory.Estimate(host, batch * spec * 16, f"segment_size={segment}, hop_length={hop}, batch_size={batch}")

    def passes(self, signal: Signal, runtime: backends.Runtime = backends.EXACT, **options) -> list[Pass]:
        opts = read_options("mdx", options)
        segment, batch, hop = opts["segment_size"], opts["batch_size"], opts["hop_length"]
        denoise, overlap = opts["enable_denoise"], float(opts["overlap"])
        if overlap >= 1:  # the table's range is MSST's too
            raise DSUError("bad_value", "overlap must be a number from 0 up to (not including) 1, "
                                        f"not {opts['overlap']!r}")
        chunk_size = hop * (segment - 1)
        trim = self.n_fft // 2
        if chunk_size - 2 * trim <= 0:
            raise DSUError("bad_value", f"segment_size {segment} with hop_length {hop} makes chunks of {chunk_size} "
                                        f"samples, not more than this model's n_fft {self.n_fft}: raise segment_size")
        if int((1 - overlap) * chunk_size) < 1:
            raise DSUError("bad_value", f"overlap {overlap} leaves no step between chunks: lower it")
        run = self.openvino_network(segment, runtime) if runtime.backend == "openvino" else self.network(segment)
        limit = self.peak_limit(**options)
        peak = peak_of(signal)
        gain = limit / peak if peak > limit else 1.0
        source = Scaled(signal, gain) if gain != 1.0 else signal
        fn = self.chunk_fn(run, hop, denoise, peak)
        return [Pass(model=fn, signal=source, chunks=demix_chunks(signal.length, chunk_size, trim, overlap),
                     batch_size=batch)]

    def peak_limit(self, **options) -> float:
        limit = read_options("mdx", options)["normalization_threshold"]
        if limit <= 0:
            raise DSUError("bad_value", f"normalization_threshold must be a number in (0, 1], not {limit!r}")
        return float(limit)

    def network(self, frames: int):
        """spectrogram [batch, 4, dim_f, frames] -> the primary stem's, through onnxruntime."""
        session = self.session
        if self.fixed_frames is not None and frames != self.fixed_frames:
            if self._free_session is None:
                self._free_session = free_frames(self.path, self.session.get_providers(), Path(self.path).name)
            if self._free_session is None:
                raise DSUError("bad_value", f"{self.name} takes exactly {self.fixed_frames} frames: use "
                                            f"segment_size {self.fixed_frames} (other sizes need the `onnx` package)")
            session = self._free_session
        one_at_a_time = self.fixed_batch == 1 and session is self.session

        def infer(spec: np.ndarray) -> np.ndarray:
            try:
                return session.run(None, {self.input_name: spec})[0]
            except Exception as e:  # onnxruntime's own exception types: the graph cannot take this input
                hint = (f"use segment_size {self.fixed_frames}, the frames it was made for"
                        if session is not self.session else
                        "check `mdx_dim_f_set`, `mdx_dim_t_set` and `mdx_n_fft_scale_set`")
                raise DSUError("config_mismatch", f"{self.name} fails on a spectrogram of shape {spec.shape}: "
                                                  f"{str(e).splitlines()[0][:300]}; {hint}") from None

        def run(spec: Tensor) -> Tensor:
            parts = spec.split(1) if one_at_a_time else (spec,)
            out = [infer(p.cpu().numpy()) for p in parts]
            return torch.from_numpy(np.concatenate(out)).to(spec.device)
        return run

    def openvino_network(self, frames: int, runtime: backends.Runtime):
        """`network` through OpenVINO: the ONNX file read by OpenVINO, its input reshaped to any batch
        of [4, dim_f, frames] (a graph whose reshapes fix the batch: batch 1, called per spectrogram),
        compiled once per (frames, precision, threads) and kept with the model."""
        if "_compiled" not in vars(self):
            self._compiled: dict[tuple, tuple] = {}
        key = (frames, runtime.precision, runtime.threads)
        if key not in self._compiled:
            self._compiled[key] = self._compile(frames, runtime)
        request, one_at_a_time = self._compiled[key]

        def infer(spec: np.ndarray) -> np.ndarray:
            try:
                request.infer([np.ascontiguousarray(spec)])
            except Exception as e:  # OpenVINO's own exception types: the graph cannot take this input
                raise DSUError("config_mismatch", f"{self.name} fails on a spectrogram of shape {spec.shape}: "
                                                  f"{str(e).splitlines()[0][:300]}") from None
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)

        def run(spec: Tensor) -> Tensor:
            parts = spec.split(1) if one_at_a_time else (spec,)
            out = [infer(p.cpu().numpy()) for p in parts]
            return torch.from_numpy(np.concatenate(out)).to(spec.device)
        return run

    def _compile(self, frames: int, runtime: backends.Runtime):
        import openvino

        from ..backends.openvino import compile_options
        core = openvino.Core()
        failures = []
        for batch in (-1, 1):
            model = core.read_model(self.path)
            try:
                model.reshape({model.inputs[0]: openvino.PartialShape([batch, 4, self.dim_f, frames])})
                compiled = core.compile_model(model, "CPU", compile_options(runtime))
            except Exception as e:  # a graph with the batch (or frames) fixed inside
                failures.append(str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
                continue
            return compiled.create_infer_request(), batch == 1
        frames_it_takes = self.fixed_frames or self.dim_t
        raise DSUError("bad_value", f"OpenVINO cannot run {self.name} on {frames} frames ({failures[-1]}): "
                                    f"use backend torch (onnxruntime) or segment_size {frames_it_takes}")

    def chunk_fn(self, run, hop: int, denoise: bool, peak: float):
        """[batch, 2, n] of the scaled mix -> [batch, 2 stems, 2, n]: the primary stem (times the
        mix's peak, as the reference does) and the scaled mix minus compensate x primary. The
        secondary is formed per chunk: overlap-add of the windowed chunks gives back the mix exactly,
        so this is the reference's mix - compensate x primary without a second reader of the file."""
        window = torch.hann_window(self.n_fft, periodic=True, device=self.stft_device)

        def separate(x: Tensor) -> Tensor:
            x = x.to(self.stft_device)
            spec = spectrogram(x, self.n_fft, hop, self.dim_f, window)
            spec[:, :, :ZEROED_BINS] = 0
            if denoise:  # the network's odd part: what it does to the signal, not to its sign
                pred = run(-spec) * -0.5 + run(spec) * 0.5
            else:
                pred = run(spec)
            self.check_output(pred, spec)
            primary = waveform(pred, self.n_fft, hop, window) * peak
            return torch.stack([primary, x - primary * self.compensate], 1)
        return separate

    def check_output(self, pred: Tensor, spec: Tensor) -> None:
        if pred.shape != spec.shape:
            raise DSUError("config_mismatch", f"{self.name} returns a spectrogram of shape {tuple(pred.shape)} for "
                                              f"{tuple(spec.shape)}: it is not an MDX-Net model of these settings "
                                              "(check `mdx_dim_f_set`, `mdx_dim_t_set`, `mdx_n_fft_scale_set`)")


# ---- family hooks ----------------------------------------------------------------------------------

def model_settings(path: str, overrides: dict) -> dict:
    """The table entry for the file (by UVR's md5) with the request's overrides, in table keys."""
    translated = {OVERRIDES[k]: v for k, v in overrides.items() if k in OVERRIDES}
    if translated.get("dim_t") is not None:
        translated["dim_t"] = 2 ** int(translated["dim_t"])
    return uvr.model_data("mdx", path, translated)


def check_input(data: dict, shape: list, path: str) -> None:
    """Fill dim_f / dim_t from a network input that fixes them; refuse settings it contradicts."""
    name = Path(path).name
    if len(shape) != 4 or fixed(shape[1]) not in (None, 4):
        raise DSUError("bad_value", f"{name} takes input of shape {shape}, not MDX-Net's [batch, 4, dim_f, dim_t]")
    for key, dim, override in (("dim_f", shape[2], "mdx_dim_f_set"), ("dim_t", shape[3], "mdx_dim_t_set")):
        if fixed(dim) is None:
            continue
        if data.get(key) is None:
            data[key] = dim
        elif int(data[key]) != dim:
            raise DSUError("config_mismatch", f"{name} takes {key} {dim} but its settings say {data[key]}: check "
                                              f"`{override}` (or the table entry for md5 {uvr.model_hash(path)})")


def _load(ref: ModelRef, device: torch.device) -> MDXModel:
    (path,) = ref.files
    data = model_settings(path, dict(ref.options))
    session = open_session(path, providers_for(device), Path(path).name)
    check_input(data, list(session.get_inputs()[0].shape), path)
    needed = {"mdx_n_fft_scale_set": data.get("n_fft"), "mdx_dim_f_set": data.get("dim_f"),
              "mdx_dim_t_set": data.get("dim_t")}
    uvr.require(needed, path, "mdx")
    n_fft, dim_f = int(data["n_fft"]), int(data["dim_f"])
    if n_fft < 2 or n_fft % 2 or dim_f > n_fft // 2 + 1:
        raise DSUError("config_mismatch", f"{Path(path).name}: n_fft {n_fft} with dim_f {dim_f} is not an MDX-Net "
                                          "setting (n_fft even, dim_f <= n_fft / 2 + 1): check "
                                          "`mdx_n_fft_scale_set` and `mdx_dim_f_set`")
    return MDXModel(ref.name, path, session, data, device)


def _resolve(request: dict, models_dir: Path | None) -> ModelRef | None:
    path = uvr.model_path(request, models_dir, "mdx", ".onnx")
    if path is None:
        return None
    request = uvr.with_folder_data(request, path, models_dir, "mdx")  # settings kept beside the models
    overrides = {k: request.get(k) for k in OVERRIDES}
    return make_ref("mdx", Path(path).stem, (path,), **overrides)


def _list(models_dir: Path | None) -> list[dict]:
    return uvr.list_files(models_dir, "mdx", ".onnx")


FAMILY = Family(name="mdx", layout="uvr", default_bit_depth=16, model_types=("mdx",), extensions=(".onnx",),
                loader=_load, resolver=_resolve, lister=_list)
