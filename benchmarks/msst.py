"""MSST family speed and memory: DSU vs MSST's own `demix`, side by side, on real-size configs with
random weights (no weights can be downloaded here).

    python benchmarks/msst.py [--seconds 10] [--types bs_roformer ...] [--threads 2]
                              [--msst PATH_TO_MSST_CHECKOUT --msst-python PYTHON_WITH_ITS_DEPS]

MSST's column needs a checkout of ZFTurbo/Music-Source-Separation-Training outside this repo (its
path from --msst or $MSST_PATH) and a Python with its requirements (--msst-python or
$MSST_PYTHON, default this one); without them the column is skipped. Every measurement runs in a
fresh subprocess, so peak RSS is that run's alone. The input is a synthetic stereo mix of --seconds;
MSST pads both ends by the overlap, so on short inputs the per-minute figure includes that padding
(it shrinks relative to the audio as files get longer). Also printed: the model FLOPs per second of
audio (matmuls and convolutions, counted by torch on one chunk; FFTs not counted) and the GFLOP/s
reached against this CPU's fp32 peak estimated from its flags and clock."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from children import peak_rss_mb, run_child

SR = 44100


def _viperx_bands():
    return tuple([2] * 24 + [4] * 12 + [12] * 8 + [24] * 8 + [48] * 8 + [128, 129])


_STFT_LOSS = {"multi_stft_resolution_loss_weight": 1.0,
              "multi_stft_resolutions_window_sizes": (4096, 2048, 1024, 512, 256),
              "multi_stft_hop_size": 147, "multi_stft_normalized": False}

# The public configs' model and inference sections (MSST's configs/viperx/model_bs_roformer_ep_317_sdr_12.9755.yaml,
# configs/KimberleyJensen/config_vocals_mel_band_roformer_kj.yaml, configs/config_vocals_mdx23c.yaml, and
# the v1.0.13 release's config_musdb18_scnet_xl.yaml).
CASES = {
    "bs_roformer": {  # 'viperx 1297'
        "audio": {"chunk_size": 352800, "num_channels": 2, "sample_rate": SR},
        "model": {"dim": 512, "depth": 12, "stereo": True, "num_stems": 1, "time_transformer_depth": 1,
                  "freq_transformer_depth": 1, "linear_transformer_depth": 0, "freqs_per_bands": _viperx_bands(),
                  "dim_head": 64, "heads": 8, "attn_dropout": 0.1, "ff_dropout": 0.1, "flash_attn": True,
                  "dim_freqs_in": 1025, "stft_n_fft": 2048, "stft_hop_length": 441, "stft_win_length": 2048,
                  "stft_normalized": False, "mask_estimator_depth": 2, **_STFT_LOSS},
        "training": {"instruments": ["vocals", "other"], "target_instrument": "vocals", "use_amp": True},
        "inference": {"batch_size": 4, "dim_t": 801, "num_overlap": 2},
    },
    "mel_band_roformer": {  # Kimberley Jensen's vocals model
        "audio": {"chunk_size": 352800, "num_channels": 2, "sample_rate": SR},
        "model": {"dim": 384, "depth": 6, "stereo": True, "num_stems": 1, "time_transformer_depth": 1,
                  "freq_transformer_depth": 1, "num_bands": 60, "dim_head": 64, "heads": 8, "attn_dropout": 0,
                  "ff_dropout": 0, "flash_attn": True, "dim_freqs_in": 1025, "sample_rate": SR,
                  "stft_n_fft": 2048, "stft_hop_length": 441, "stft_win_length": 2048, "stft_normalized": False,
                  "mask_estimator_depth": 2, **_STFT_LOSS},
        "training": {"instruments": ["vocals", "other"], "target_instrument": "vocals", "use_amp": True},
        "inference": {"batch_size": 4, "dim_t": 256, "num_overlap": 2},
    },
    "scnet": {  # SCNet XL
        "audio": {"chunk_size": 485100, "num_channels": 2, "sample_rate": SR},
        "model": {"sources": ["drums", "bass", "other", "vocals"], "audio_channels": 2, "dims": [4, 96, 192, 384],
                  "nfft": 4096, "hop_size": 1024, "win_size": 4096, "normalized": True,
                  "band_SR": [0.225, 0.372, 0.403], "band_stride": [1, 4, 16], "band_kernel": [3, 4, 16],
                  "conv_depths": [3, 2, 1], "compress": 4, "conv_kernel": 3, "num_dplayer": 8, "expand": 1},
        "training": {"instruments": ["drums", "bass", "other", "vocals"], "target_instrument": None, "use_amp": True},
        "inference": {"batch_size": 8, "dim_t": 256, "num_overlap": 4, "normalize": False},
    },
    "mdx23c": {  # MDX23C vocals
        "audio": {"chunk_size": 261120, "dim_f": 4096, "dim_t": 256, "hop_length": 1024, "n_fft": 8192,
                  "num_channels": 2, "sample_rate": SR, "min_mean_abs": 0.001},
        "model": {"act": "gelu", "bottleneck_factor": 4, "growth": 128, "norm": "InstanceNorm",
                  "num_blocks_per_scale": 2, "num_channels": 128, "num_scales": 5, "num_subbands": 4,
                  "scale": [2, 2]},
        "training": {"instruments": ["vocals", "other"], "target_instrument": None, "use_amp": True},
        "inference": {"batch_size": 1, "dim_t": 256, "num_overlap": 4},
    },
}


def cpu_peak_gflops(threads: int) -> tuple[float, str]:
    """fp32 FLOPs a core can retire per cycle from its vector flags (two FMA units assumed), times the
    clock the CPU names, times the threads used."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set(re.search(r"^flags\s*:(.*)$", info, re.M).group(1).split()) if "flags" in info else set()
    per_cycle = 64 if "avx512f" in flags else 32 if "fma" in flags else 8
    ghz = re.search(r"@ ([\d.]+)GHz", info)
    ghz = float(ghz.group(1)) if ghz else 2.5
    return threads * ghz * per_cycle, f"{threads} cores x {ghz} GHz x {per_cycle} FLOP/cycle"


# ---- children (each in its own process) -----------------------------------------------------------

def child_prepare(model_type: str, work: Path, seconds: float) -> None:
    """Config, random-weight checkpoint and input, written where both columns read them."""
    import numpy as np
    import soundfile as sf
    import torch
    import yaml
    from dsu.families.msst import build_model, load_config
    (work / "config.yaml").write_text(yaml.dump(CASES[model_type], sort_keys=False))
    torch.manual_seed(0)
    model = build_model(model_type, load_config(work / "config.yaml"))
    torch.save(model.state_dict(), work / "model.ckpt")
    rng = np.random.default_rng(0)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    mix = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)]) * 0.3 + 0.05 * rng.standard_normal((2, n))
    sf.write(work / "input.wav", mix.T.astype(np.float32), SR, subtype="FLOAT")


def child_dsu(model_type: str, work: Path, threads: int, flops: bool) -> dict:
    import torch
    torch.set_num_threads(threads)
    from dsu import families
    from dsu.jobs.separate import separate_file
    ref = families.resolve({"model_path": str(work / "model.ckpt"), "config_path": str(work / "config.yaml"),
                            "model_type": model_type}, None)
    model = families.load(ref, torch.device("cpu"))
    started = time.perf_counter()
    separate_file(model, work / "input.wav", work / "out")
    out = {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}
    if flops:
        from torch.utils.flop_counter import FlopCounterMode
        from dsu.families.msst import demix_chunks
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model.model(torch.zeros(1, model.audio_channels, model.chunk_size))
        per_chunk = counter.get_total_flops() / 1e9
        run = len(demix_chunks(input_frames(work), model.chunk_size, model.num_overlap, model.batch_size))
        out["gflop_run"] = per_chunk * run
        # on a long file every output sample is covered num_overlap times
        out["gflop_per_audio_second"] = per_chunk * model.num_overlap * SR / model.chunk_size
    return out


def input_frames(work: Path) -> int:
    import soundfile as sf
    return sf.info(str(work / "input.wav")).frames


def child_msst(model_type: str, work: Path, threads: int, msst: str, save: Path | None = None) -> dict:
    """MSST's `demix` over the input; its stems saved to `save` (an .npz by instrument) when given."""
    import numpy as np
    import soundfile as sf
    import torch
    torch.set_num_threads(threads)
    sys.path.insert(0, msst)
    from utils.model_utils import demix
    from utils.settings import get_model_from_config
    model, config = get_model_from_config(model_type, str(work / "config.yaml"))
    model.load_state_dict(torch.load(work / "model.ckpt", map_location="cpu", weights_only=True))
    model.eval()
    mix, _ = sf.read(work / "input.wav", dtype="float32", always_2d=True)
    started = time.perf_counter()
    stems = demix(config, model, mix.T.copy(), "cpu", model_type)
    seconds = time.perf_counter() - started
    if save is not None:
        np.savez(save, **{name: np.asarray(stem, np.float32) for name, stem in stems.items()})
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}


# ---- driver ---------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="input length (short on a 2-core machine)")
    ap.add_argument("--types", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--msst", default=os.environ.get("MSST_PATH"), help="MSST checkout (outside this repo)")
    ap.add_argument("--msst-python", default=os.environ.get("MSST_PYTHON", sys.executable))
    ap.add_argument("--child", choices=["prepare", "dsu", "msst"], help=argparse.SUPPRESS)
    ap.add_argument("--type", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--flops", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        work = Path(args.work)
        if args.child == "prepare":
            child_prepare(args.type, work, args.seconds)
            print("{}")
        elif args.child == "dsu":
            print(json.dumps(child_dsu(args.type, work, args.threads, args.flops)))
        else:
            print(json.dumps(child_msst(args.type, work, args.threads, args.msst)))
        return

    msst = args.msst if args.msst and Path(args.msst, "utils", "model_utils.py").is_file() else None
    peak, how = cpu_peak_gflops(args.threads)
    print(f"input {args.seconds:g} s synthetic stereo at {SR} Hz, {args.threads} threads, random weights; "
          f"CPU fp32 peak ~{peak:.0f} GFLOP/s ({how})")
    if not msst:
        print("MSST column skipped: give --msst PATH (and --msst-python) or set MSST_PATH")
    per_min = 60 / args.seconds
    header = (f"{'model':<18} {'DSU s/min':>10} {'MSST s/min':>11} {'DSU RSS MB':>11} {'MSST RSS MB':>12} "
              f"{'GFLOP/audio s':>14} {'DSU GFLOP/s':>12} {'of peak':>8}")
    print(header)
    for model_type in args.types:
        with tempfile.TemporaryDirectory(prefix=f"dsu-bench-{model_type}-") as tmp:
            common = ("--type", model_type, "--work", tmp, "--threads", str(args.threads), "--seconds", str(args.seconds))
            if run_child(__file__, sys.executable, "--child", "prepare", *common) is None:
                continue
            dsu = run_child(__file__, sys.executable, "--child", "dsu", *common, "--flops") or {}
            ref = run_child(__file__, args.msst_python, "--child", "msst", *common, "--msst", msst) if msst else None
        fmt = lambda d, k, scale=1.0: f"{d[k] * scale:.1f}" if d and k in d else "-"
        achieved = dsu["gflop_run"] / dsu["seconds"] if "gflop_run" in dsu else None
        print(f"{model_type:<18} {fmt(dsu, 'seconds', per_min):>10} {fmt(ref, 'seconds', per_min):>11} "
              f"{fmt(dsu, 'peak_rss_mb'):>11} {fmt(ref, 'peak_rss_mb'):>12} {fmt(dsu, 'gflop_per_audio_second'):>14} "
              f"{(f'{achieved:.0f}' if achieved else '-'):>12} {(f'{100 * achieved / peak:.0f}%' if achieved else '-'):>8}",
              flush=True)


if __name__ == "__main__":
    main()
