"""A job's memory estimate (`LoadedModel.memory_estimate`, what `out_of_memory` refusals are based on)
side by side with the peak RSS the job really added, each job in a fresh process:

    PYTHONPATH=src .venv/bin/python benchmarks/memory_estimate.py [--seconds 60] [--real]

`--real` adds real-size random-weight models in the native formats (no weights can be downloaded
here): HTDemucs at demucs' published size, and BS-RoFormer with the published viperx 1297 config
(`src/dsu/configs/msst/model_bs_roformer_ep_317_sdr_12.9755.yaml`).

The estimate is meant as a floor that still catches absurd options: a job it refuses would need at
least that much; a job it lets through may need somewhat more (the allocator, libraries' buffers)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from children import run_child  # noqa: E402
import ensemble  # noqa: E402  (imported while benchmarks/ is on the path: its real-size Demucs)

# benchmarks/demucs.py would shadow the demucs package the Demucs family imports
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

MDX = Path(__file__).parent.parent / "tests" / "fixtures" / "mdx"
CASES = {
    "dsp": ({"model": "dsp"}, {}),
    "dsp segment=30": ({"model": "dsp"}, {"segment": 30.0}),
    "mdx fixture segment=256": ({"model_path": str(MDX / "model.onnx"), "mdx_n_fft_scale_set": 2048,
                                 "primary_stem": "Vocals"}, {"segment_size": 256}),
    "mdx fixture segment=1024 batch=4": ({"model_path": str(MDX / "model.onnx"), "mdx_n_fft_scale_set": 2048,
                                          "primary_stem": "Vocals"}, {"segment_size": 1024, "batch_size": 4}),
}


def real_cases(folder: Path) -> dict:
    """Random-weight models at the published sizes, written as users' files are."""
    import torch
    from dsu.families.model_folder import read_yaml
    from dsu.families.msst import build_model
    ensemble.published_demucs(folder, "htdemucs")
    torch.manual_seed(0)
    config = Path(__file__).parent.parent / "src/dsu/configs/msst/model_bs_roformer_ep_317_sdr_12.9755.yaml"
    roformer = build_model("bs_roformer", read_yaml(config))
    torch.save(roformer.state_dict(), folder / "bs_roformer_1297.ckpt")
    return {"htdemucs (real size)": ({"model_path": str(folder / "htdemucs.th")}, {}),
            "BS-RoFormer 1297 config (real size)": ({"model_path": str(folder / "bs_roformer_1297.ckpt"),
                                                     "config_path": str(config)}, {})}


def child(case: str, song: str, out: str) -> None:
    import torch
    from dsu import families
    from dsu.audio import FileSignal
    from dsu.jobs.separate import separate_file
    torch.set_num_threads(1)
    request, options = json.loads(case)
    model = families.load(families.resolve(request, None), torch.device("cpu"))
    signal = FileSignal(song, model.samplerate, model.audio_channels)
    estimate = model.memory_estimate(signal.length, **options)
    before = _reset_peak()
    separate_file(model, song, out, options=options)
    print(json.dumps({"estimate_mb": (estimate.host + estimate.device) / 2 ** 20,
                      "added_mb": _status_mb("VmHWM") - before}))


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def _reset_peak() -> float:
    """Start the peak (VmHWM) again from the current RSS, so loading's own peak does not hide the
    job's (Linux: writing 5 to clear_refs); the current RSS in MB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--real", action="store_true", help="add real-size random-weight Demucs and MSST models")
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    with tempfile.TemporaryDirectory() as tmp:
        song = Path(tmp) / "song.wav"
        t = np.arange(int(args.seconds * 44100)) / 44100
        noise = np.random.default_rng(0).standard_normal((t.size, 2)) * 0.05
        sf.write(song, (0.3 * np.sin(2 * np.pi * 220 * t)[:, None] + noise).astype(np.float32), 44100)
        print(f"{'case':<34} {'estimate MB':>12} {'peak added MB':>14}   ({args.seconds:g} s stereo)")
        cases = {**CASES, **(real_cases(Path(tmp)) if args.real else {})}
        for case, spec in cases.items():
            got = run_child(__file__, sys.executable, "--child", json.dumps(spec), str(song), str(Path(tmp) / "out"))
            if got:
                print(f"{case:<34} {got['estimate_mb']:>12.0f} {got['added_mb']:>14.0f}")


if __name__ == "__main__":
    main()
