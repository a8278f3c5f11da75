"""UVR's VR-architecture models: a `.pth` state dict of a CascadedASPPNet (v5.0) or CascadedNet (v5.1)
that masks UVR's multi-band magnitude spectrogram (`dsu.families.vr_bands`).

A model is named by `model_path` (any `.pth`, or any file with `model_type: "vr"`) or by `model`, the
stem of a `.pth` file in the models dir. Its band parameters and primary stem come from UVR's model
data (by the file's md5, `dsu.families.uvr`) or from the request (`vr_model_param`, `primary_stem`,
`nout`, `nout_lstm`, `is_karaoke`, `is_bv_model`, `is_bv_model_rebalanced`).

Inference is python-audio-separator's VRSeparator on the whole file at once: the magnitude, zero
padded by the network's offset and scaled by its maximum, is cut into windows of `window_size` frames
whose centre crops are stitched back into one mask (TTA: again with the windows shifted by half a
crop, the two averaged); the mask is sharpened by `aggression` and optionally post-processed; the
primary stem is the masked mix, the secondary the mix times one minus the mask; each stem, optionally
with its missing top rows mirrored from the input (`high_end_process`), goes back to a wave. The stem
files are scaled down to a peak of `normalization_threshold` (0.9) when louder, as
python-audio-separator writes them (`peak_limit`, done by the writer).
`is_karaoke` and the backing-vocal settings are kept with the model but change nothing here, as in
python-audio-separator (UVR only uses them to chain models)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backends, memory
from ..engine import Chunk, Pass, Signal
from ..errors import DSUError
from . import uvr, vr_bands
from .base import Family, LoadedModel, ModelRef, make_ref, option_names, read_options
from .packages import load_weights_file

UVR_RATE = 44100
# request field -> model-data key
OVERRIDES = {"vr_model_param": "band_params", "primary_stem": "primary_stem", "nout": "nout",
             "nout_lstm": "nout_lstm", "is_karaoke": "karaoke", "is_bv_model": "backing_vocals",
             "is_bv_model_rebalanced": "bv_rebalance"}


def settings(options: dict) -> dict:
    """The VR options of a request, by their plain names, checked (`dsu.protocol.FAMILY_OPTIONS`); the
    backend and precision are the runtime's (`passes` gets it), not the pipeline's."""
    out = read_options("vr", options)
    for name in ("backend", "precision"):
        out.pop(name, None)
    if out["normalization_threshold"] <= 0:
        raise DSUError("bad_value", "normalization_threshold must be in (0, 1]")
    return out


def make_padding(frames: int, window: int, offset: int) -> tuple[int, int, int]:
    """UVR's (left pad, right pad, frames kept per window) for `frames` masked in `window`-frame windows."""
    roi = window - 2 * offset or window
    return offset, roi - frames % roi + offset, roi


class VRModel(LoadedModel):
    family = "vr"
    options = option_names("vr")

    def __init__(self, name: str, net: torch.nn.Module, params: vr_bands.BandParams, data: dict,
                 device: torch.device):
        from ..models.vr_cascade import CascadedASPPNet
        from ..models.vr_cascade_v51 import CascadedNetV51
        assert isinstance(net, (CascadedASPPNet, CascadedNetV51))  # the two networks build_vr_net makes
        self.name, self.params = name, params
        self.net = net.to(device).eval()
        self.device = device
        self.v51 = isinstance(net, CascadedNetV51)  # the two generations read stereo and fade bands differently
        # UVR loads the mix at the top band's rate with that band's resampler and writes stems at
        # 44.1 kHz; taking and giving 44.1 kHz and resampling inside keeps its resamplers for the
        # usual 44.1 kHz files
        self.samplerate = UVR_RATE
        primary = data["primary_stem"]
        self.stems = [primary, uvr.secondary_stem(primary)]

    def memory_estimate(self, length: int, **options):
        """The whole file's spectrograms (every band's, the stacked mix, its magnitude, the mask, two
        stems: about a dozen stacked-spectrogram copies) plus one batch of network windows."""
        opts = settings(options)
        top = self.params.top
        frames = int(length * top.samplerate / UVR_RATE) // top.hop + 1
        stacked = 2 * self.params.bins * frames * 8  # complex64, two channels
        windows = opts["batch_size"] * 2 * self.params.bins * opts["window_size"] * memory.FLOAT * 16
        return memory.Estimate(12 * stacked + 6 * length * 2 * memory.FLOAT, windows,
                               f"{length / UVR_RATE:.0f} s as one spectrogram, window_size={opts['window_size']}, "
                               f"batch_size={opts['batch_size']}")

    def passes(self, signal: Signal, runtime: backends.Runtime = backends.EXACT, **options) -> list[Pass]:
        opts = settings(options)
        if opts["window_size"] <= 2 * self.net.offset:
            raise DSUError("bad_value", f"window_size must be more than {2 * self.net.offset} frames for this "
                                        f"network (320, 512 or 1024 as in UVR), not {opts['window_size']}")
        n = signal.length
        whole = Chunk(start=0, size=n, keep=0, out_start=0, out_size=n, window=torch.ones(n))
        opts.pop("normalization_threshold")  # the writer's
        # the core: a batch of magnitude windows -> their cropped masks; padding, scaling and
        # stitching depend on the file's length and stay outside it
        net = self.core(self.net, runtime, core=self.net.predict_mask)

        def run(x: Tensor, step) -> Tensor:
            return torch.stack([self.separate(wave, step, net=net, **opts) for wave in x])
        return [Pass(model=run, signal=signal, chunks=[whole], steps=True)]

    def peak_limit(self, **options) -> float:
        return float(settings(options)["normalization_threshold"])

    # ---- the VR pipeline on one whole mix ----------------------------------------------------------

    @torch.inference_mode()
    def separate(self, wave: Tensor, step=lambda fraction: None, *, net=None, window_size: int, aggression: int,
                 enable_tta: bool, enable_post_process: bool, post_process_threshold: float, high_end_process: bool,
                 batch_size: int) -> Tensor:
        """[2, n] -> [2 stems, 2, n]; `step(fraction)` as the network's windows are done (it may stop
        the job by raising); `net` runs the network's windows (default: the module itself)."""
        net = net or self.net.predict_mask
        length = wave.shape[-1]
        wave = vr_bands.resample(wave, UVR_RATE, self.params.top.samplerate, self.params.top.resampler)
        step(0.0)  # each whole-file stage is a point where `cancel` stops the job
        analysis = vr_bands.analyse(wave, self.params, self.v51)
        mix = analysis.spec
        step(0.0)
        mask = self.predict_mask(mix.abs(), window_size, batch_size, enable_tta, step, net)
        mask = vr_bands.adjust_aggression(mask, aggression, self.stems[0], self.params.bands[0].crop[1])
        if enable_post_process:
            mask = vr_bands.merge_artifacts(mask, post_process_threshold)
        out = []
        for done, stem_mask in enumerate((mask, 1 - mask)):
            step(0.95 + 0.025 * done)
            spec = _finite(stem_mask * mix)
            high_end = vr_bands.mirror_high_end(spec, analysis.top_spec, self.params) \
                if high_end_process and vr_bands.high_end_rows(self.params) > 0 else None
            stem = vr_bands.synthesise(spec, self.params, self.v51, high_end).float()
            stem = vr_bands.resample(stem, self.params.top.samplerate, UVR_RATE, "soxr_hq")  # librosa's default
            stem = F.pad(stem, (0, max(0, length - stem.shape[-1])))[:, :length]
            out.append(stem)
        return torch.stack(out)

    def predict_mask(self, magnitude: Tensor, window: int, batch_size: int, tta: bool, step, net=None) -> Tensor:
        """The network's mask over all frames; with TTA averaged with a pass shifted by half a crop.
        The windows are most of the work: they report 0 to 0.95 of it through `step`."""
        net = net or self.net.predict_mask
        frames = magnitude.shape[-1]
        left, right, roi = make_padding(frames, window, self.net.offset)
        share = 0.95 / (2 if tta else 1)
        mask = self._windows(net, magnitude, left, right, roi, window, batch_size,
                             lambda f: step(f * share))[..., :frames]
        if tta:
            shifted = self._windows(net, magnitude, left + roi // 2, right + roi // 2, roi, window, batch_size,
                                    lambda f: step(share + f * share))
            mask = (mask + shifted[..., roi // 2:][..., :frames]) * 0.5
        return mask

    def _windows(self, net, magnitude: Tensor, left: int, right: int, roi: int, window: int, batch_size: int,
                 step) -> Tensor:
        padded = F.pad(magnitude, (left, right))
        peak = padded.max()
        padded = padded / peak if peak > 0 else padded  # digital silence: UVR's 0/0 ends as silent stems too
        count = (padded.shape[-1] - 2 * self.net.offset) // roi
        starts = [i * roi for i in range(count)]
        parts: list[Tensor] = []
        for b in range(0, count, batch_size):
            x = torch.stack([padded[..., s:s + window] for s in starts[b:b + batch_size]]).to(self.device)
            parts.extend(net(x).float().cpu())
            step(min(b + batch_size, count) / max(count, 1))
        return torch.cat(parts, -1)


def _finite(spec: Tensor) -> Tensor:
    """NaN and infinities to zero, as python-audio-separator sanitises its stem spectrograms."""
    return torch.view_as_complex(torch.nan_to_num(torch.view_as_real(spec), nan=0.0, posinf=0.0, neginf=0.0))


# ---- family hooks ----------------------------------------------------------------------------------

def model_data(path: str | Path, request: dict) -> dict:
    """UVR's model data for the file with the request's overrides on top; a clear error when the band
    parameters or the primary stem are known from neither."""
    data = uvr.model_data("vr", path, {key: request.get(field) for field, key in OVERRIDES.items()})
    asked = {"vr_model_param": data.get("band_params"), "primary_stem": data.get("primary_stem")}
    uvr.require(asked, path, "vr")  # named as the request names them
    vr_bands.load(str(data["band_params"]))  # an unknown name fails here, listing the shipped ones
    return data


def _resolve(request: dict, models_dir: Path | None) -> ModelRef | None:
    path = uvr.model_path(request, models_dir, "vr", ".pth")
    if path is None:
        return None
    request = uvr.with_folder_data(request, path, models_dir, "vr")  # settings kept beside the models
    return make_ref("vr", Path(path).stem, (path,), **model_data(path, request))


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    state = load_weights_file(path, "a UVR VR model")
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DSUError("bad_value", f"{Path(path).name} holds no state dict of tensors: is it a UVR VR model?")
    return state


def _load(ref: ModelRef, device: torch.device) -> VRModel:
    from ..models.vr_nets import build_vr_net
    data = dict(ref.options)
    params = vr_bands.load(data["band_params"])
    net = build_vr_net(read_state_dict(ref.files[0]), params.bins, data.get("nout"), data.get("nout_lstm"))
    return VRModel(ref.name, net, params, data, device)


def _list(models_dir: Path | None) -> list[dict]:
    return uvr.list_files(models_dir, "vr", ".pth")


FAMILY = Family(name="vr", layout="uvr", default_bit_depth=16, model_types=("vr",), extensions=(".pth",),
                loader=_load, resolver=_resolve, lister=_list)
