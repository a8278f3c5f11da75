"""UVR VR, MDX-Net and Apollo speed and memory: DSU vs the reference tools, side by side, on
real-size random-weight models (no weights can be downloaded here).

    python benchmarks/uvr.py [--seconds 20] [--cases vr_hp mdx apollo] [--threads 2]
        [--audio-separator PATH --apollo PATH --ref-python PYTHON]

Cases:
  vr_hp   a v5.0 VR network of UVR's 123821-KB class (the 1_HP/2_HP-UVR size) with 4band_v2 bands,
          window 512, aggression 5
  mdx     an MDX-Net-shaped ONNX U-Net (TFC blocks + frequency bottlenecks, ~30 M weights) with
          n_fft 7680, dim_f 3072, dim_t 256 (UVR-MDX-NET-Inst_HQ_3's settings), segment 256, overlap 0.25
  apollo  Apollo with feature_dim 256, layer 6 (the published config), 7 s chunks, 0.5 s crossfade

The reference columns need checkouts outside this repo: python-audio-separator (--audio-separator or
$AUDIO_SEPARATOR_PATH) for vr_hp and mdx, JusperLee/Apollo (--apollo or $APOLLO_PATH) for apollo,
and a Python with their requirements (--ref-python or $REF_PYTHON, default this one); without them
those columns are skipped. Each run is its own subprocess, so peak RSS is that run's alone; the
input is a synthetic stereo mix of --seconds. The output SNR of DSU against the reference is
printed too (same weights, same input; the worst stem; `exact`: bit-identical)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import types
from pathlib import Path

from children import peak_rss_mb, run_child

SR = 44100
CASES = ("vr_hp", "mdx", "apollo")
MDX = {"n_fft": 7680, "dim_f": 3072, "dim_t": 256, "compensate": 1.009}
APOLLO = {"sr": SR, "win": 20, "feature_dim": 256, "layer": 6}
CHUNK_SECONDS, OVERLAP_SECONDS = 7.0, 0.5


# ---- model files ---------------------------------------------------------------------------------

def mdx_unet():
    """A network of MDX-Net's shape: [batch, 4, dim_f, dim_t] -> same, a U-Net of TFC blocks (three
    3x3 convolutions) with a frequency bottleneck (TDF) per scale, as UVR's MDX-Net models are built."""
    import torch
    from torch import nn

    def tfc(channels, cin):
        layers = []
        for i in range(3):
            layers += [nn.Conv2d(cin if i == 0 else channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
        return nn.Sequential(*layers)

    class TDF(nn.Module):
        def __init__(self, channels, freqs, bottleneck=16):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(freqs, freqs // bottleneck), nn.ReLU(), nn.Linear(freqs // bottleneck, freqs))

        def forward(self, x):  # mixes along frequency, per channel and frame
            return x + self.net(x.transpose(-1, -2)).transpose(-1, -2)

    class UNet(nn.Module):
        def __init__(self, dim_f, growth=32, scales=5):
            super().__init__()
            self.first = nn.Conv2d(4, growth, 1)
            self.down, self.down_tdf, self.pool, self.up, self.up_tfc = (nn.ModuleList() for _ in range(5))
            c, f = growth, dim_f
            for _ in range(scales):
                self.down.append(tfc(c, c))
                self.down_tdf.append(TDF(c, f))
                self.pool.append(nn.Conv2d(c, c + growth, 2, stride=2))
                c, f = c + growth, f // 2
            self.mid = tfc(c, c)
            for _ in range(scales):
                self.up.append(nn.ConvTranspose2d(c, c - growth, 2, stride=2))
                c, f = c - growth, f * 2
                self.up_tfc.append(tfc(c, 2 * c))
            self.last = nn.Conv2d(c, 4, 1)

        def forward(self, x):
            x = self.first(x)
            skips = []
            for block, tdf, pool in zip(self.down, self.down_tdf, self.pool):
                x = tdf(block(x))
                skips.append(x)
                x = pool(x)
            x = self.mid(x)
            for up, block in zip(self.up, self.up_tfc):
                x = block(torch.cat([up(x), skips.pop()], 1))
            return self.last(x)

    return UNet(MDX["dim_f"])


def child_prepare(case: str, work: Path, seconds: float) -> None:
    import numpy as np
    import soundfile as sf
    import torch
    torch.manual_seed(0)
    if case == "vr_hp":
        from dsu.models.vr_cascade import CascadedASPPNet
        torch.save(CascadedASPPNet.for_size_class(123821, 672).state_dict(), work / "2_HP-bench.pth")
    elif case == "mdx":
        net = mdx_unet().eval()
        torch.onnx.export(net, (torch.zeros(1, 4, MDX["dim_f"], MDX["dim_t"]),), str(work / "mdx-bench.onnx"),
                          input_names=["input"], output_names=["output"], dynamo=False, opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    else:
        import yaml
        from dsu.models.apollo import Apollo
        torch.save({"state_dict": {f"audio_model.{k}": v for k, v in Apollo(**APOLLO).state_dict().items()}},
                   work / "apollo-bench.ckpt")
        (work / "apollo.yaml").write_text(yaml.safe_dump({"model": APOLLO}))
    rng = np.random.default_rng(0)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    mix = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)]) * 0.3 + 0.05 * rng.standard_normal((2, n))
    sf.write(work / "input.wav", mix.T.astype(np.float32), SR, subtype="FLOAT")


# ---- DSU -----------------------------------------------------------------------------------------

def child_dsu(case: str, work: Path, threads: int) -> dict:
    import numpy as np
    import soundfile as sf
    import torch
    torch.set_num_threads(threads)
    from dsu import families
    if case == "apollo":
        from dsu.jobs.restore import restore_file
        ref = families.resolve({"model_path": str(work / "apollo-bench.ckpt"), "config_path": str(work / "apollo.yaml"),
                                "model_type": "apollo"}, None)
        model = families.load(ref, torch.device("cpu"))
        started = time.perf_counter()
        restore_file(model, work / "input.wav", work / "dsu.wav", chunk_seconds=CHUNK_SECONDS,
                     overlap_seconds=OVERLAP_SECONDS, bit_depth=32)
        seconds = time.perf_counter() - started
        out = {"restored": sf.read(work / "dsu.wav", dtype="float32")[0]}
    else:
        from dsu.jobs.separate import separate_file
        if case == "vr_hp":
            request = {"model_path": str(work / "2_HP-bench.pth"), "vr_model_param": "4band_v2",
                       "primary_stem": "Instrumental"}
        else:
            request = {"model_path": str(work / "mdx-bench.onnx"), "primary_stem": "Vocals",
                       "mdx_n_fft_scale_set": MDX["n_fft"], "mdx_dim_f_set": MDX["dim_f"], "mdx_dim_t_set": 8,
                       "compensate": MDX["compensate"]}
        model = families.load(families.resolve(request, None), torch.device("cpu"))
        started = time.perf_counter()
        result = separate_file(model, work / "input.wav", work / "dsu", bit_depth=32)
        seconds = time.perf_counter() - started
        out = {stem: sf.read(path, dtype="float32")[0] for stem, path in zip(result.stems, result.paths)}
    np.savez(work / "dsu.npz", **out)
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}


# ---- references ----------------------------------------------------------------------------------

def child_reference(case: str, work: Path, threads: int, audio_separator: str | None, apollo: str | None) -> dict:
    import numpy as np
    import soundfile as sf
    import torch
    torch.set_num_threads(threads)
    if case == "apollo":
        sys.path.insert(0, apollo)
        import inference as apollo_inference
        from look2hear.models.apollo import Apollo
        model = Apollo(**APOLLO)
        state = torch.load(work / "apollo-bench.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict({k[len("audio_model."):]: v for k, v in state.items()})
        model.eval()
        audio, _ = sf.read(work / "input.wav", dtype="float32", always_2d=True)
        started = time.perf_counter()
        with torch.inference_mode():
            restored = apollo_inference.run_model(model, torch.from_numpy(audio.T.copy())[None], torch.device("cpu"),
                                                  round(CHUNK_SECONDS * SR), round(OVERLAP_SECONDS * SR))
        seconds = time.perf_counter() - started
        np.savez(work / "ref.npz", restored=restored[0].numpy().T)
        return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}
    sys.path.insert(0, audio_separator)
    sys.modules.setdefault("onnx2torch", types.ModuleType("onnx2torch"))  # only for segment sizes the file does not fix
    common = dict(logger=logging.getLogger("ref"), log_level=logging.WARNING, torch_device=torch.device("cpu"),
                  torch_device_cpu=torch.device("cpu"), torch_device_mps=None,
                  onnx_execution_provider=["CPUExecutionProvider"], output_dir=str(work), output_format="wav",
                  normalization_threshold=0.9, amplification_threshold=0.0, enable_denoise=False,
                  output_single_stem=None, invert_using_spec=False, sample_rate=SR, use_soundfile=True)
    if case == "vr_hp":
        from audio_separator.separator.architectures.vr_separator import VRSeparator as Arch
        common.update(model_name="2_HP-bench", model_path=str(work / "2_HP-bench.pth"),
                      model_data={"vr_model_param": "4band_v2", "primary_stem": "Instrumental"})
        arch = dict(window_size=512, aggression=5, batch_size=1, enable_tta=False, enable_post_process=False,
                    post_process_threshold=0.2, high_end_process=False)
    else:
        from audio_separator.separator.architectures.mdx_separator import MDXSeparator as Arch
        common.update(model_name="mdx-bench", model_path=str(work / "mdx-bench.onnx"),
                      model_data={"compensate": MDX["compensate"], "mdx_dim_f_set": MDX["dim_f"], "mdx_dim_t_set": 8,
                                  "mdx_n_fft_scale_set": MDX["n_fft"], "primary_stem": "Vocals"})
        arch = dict(segment_size=256, overlap=0.25, batch_size=1, hop_length=1024, enable_denoise=False)
    separator = Arch(common, arch)
    stems = {}
    # the stems as the reference hands them to its writer (before its write-time peak normalisation)
    separator.final_process = lambda path, source, name: stems.__setitem__(name, np.asarray(source, np.float32).T)
    started = time.perf_counter()
    separator.separate(str(work / "input.wav"))
    seconds = time.perf_counter() - started
    np.savez(work / "ref.npz", **stems)
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def snr_db(work: Path) -> float | None:
    """The worst stem's SNR of DSU's output against the reference's (stems matched by name)."""
    import numpy as np
    if not (work / "ref.npz").is_file() or not (work / "dsu.npz").is_file():
        return None
    ref, dsu = np.load(work / "ref.npz"), np.load(work / "dsu.npz")
    worst = None
    for name in ref.files:
        match = next((k for k in dsu.files if k.lower() == name.lower()), None)
        if match is None:
            continue
        a, b = (np.atleast_2d(x.astype(np.float64)) for x in (ref[name], dsu[match]))
        a, b = (x if x.shape[0] <= 2 else x.T for x in (a, b))  # both [channels, samples]
        n = min(a.shape[-1], b.shape[-1])
        a, b = a[..., :n], b[..., :n]
        noise = np.sum((a - b) ** 2)
        snr = 10 * np.log10(np.sum(a ** 2) / noise) if noise > 0 else float("inf")
        worst = snr if worst is None else min(worst, snr)
    return worst


# ---- driver ---------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="input length")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--audio-separator", default=os.environ.get("AUDIO_SEPARATOR_PATH"),
                    help="python-audio-separator checkout (outside this repo)")
    ap.add_argument("--apollo", default=os.environ.get("APOLLO_PATH"), help="JusperLee/Apollo checkout")
    ap.add_argument("--ref-python", default=os.environ.get("REF_PYTHON", sys.executable))
    ap.add_argument("--child", choices=["prepare", "dsu", "reference"], help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        work = Path(args.work)
        if args.child == "prepare":
            child_prepare(args.case, work, args.seconds)
            print("{}")
        elif args.child == "dsu":
            print(json.dumps(child_dsu(args.case, work, args.threads)))
        else:
            print(json.dumps(child_reference(args.case, work, args.threads, args.audio_separator, args.apollo)))
        return

    refs = {"vr_hp": args.audio_separator, "mdx": args.audio_separator, "apollo": args.apollo}
    print(f"input {args.seconds:g} s synthetic stereo at {SR} Hz, {args.threads} threads, random weights")
    missing = sorted({c for c in args.cases if not refs[c]})
    if missing:
        print(f"reference column skipped for {', '.join(missing)}: give --audio-separator / --apollo")
    per_min = 60 / args.seconds
    print(f"{'case':<8} {'DSU s/min':>10} {'ref s/min':>10} {'DSU RSS MB':>11} {'ref RSS MB':>11} {'SNR dB':>8}")
    for case in args.cases:
        with tempfile.TemporaryDirectory(prefix=f"dsu-bench-{case}-") as tmp:
            common = ("--case", case, "--work", tmp, "--threads", str(args.threads), "--seconds", str(args.seconds))
            if run_child(__file__, sys.executable, "--child", "prepare", *common) is None:
                continue
            dsu = run_child(__file__, sys.executable, "--child", "dsu", *common) or {}
            ref = None
            if refs[case]:
                extra = (("--audio-separator", refs[case]) if case != "apollo" else ("--apollo", refs[case]))
                ref = run_child(__file__, args.ref_python, "--child", "reference", *common, *extra)
            snr = snr_db(Path(tmp))
        fmt = lambda d, k, scale=1.0: f"{d[k] * scale:.1f}" if d and k in d else "-"
        print(f"{case:<8} {fmt(dsu, 'seconds', per_min):>10} {fmt(ref, 'seconds', per_min):>10} "
              f"{fmt(dsu, 'peak_rss_mb'):>11} {fmt(ref, 'peak_rss_mb'):>11} "
              f"{('-' if snr is None else 'exact' if snr == float('inf') else f'{snr:.1f}'):>8}", flush=True)


if __name__ == "__main__":
    main()
