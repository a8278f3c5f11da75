"""`dsu batch` throughput: one worker vs `--jobs 2` (1 thread each) vs Ray with 2 actors, side by
side, on eight 30 s files, with the built-in `dsp` model and a small random-weight BS-RoFormer.

    python benchmarks/batch.py [--files 8] [--seconds 30] [--models dsp,roformer]

For each model it first times the model's own compute on one file in this process (loaded, warm,
1 thread): that is what a file costs with no batch machinery at all. Then each path runs the whole
batch into a fresh folder through `dsu.batch.run` and reports files per minute, start-up (until the
first file is sent), the separate job's own time per file as the worker or actor reports it
(`elapsed`: decode, model, write; model already loaded) and the per-file overhead of the path:
(steady wall time x slots / files) - that job time, i.e. what a slot spends per file on dispatch,
messages and the manifest rather than on the job. On a shared or small machine `--jobs 2` also
shows in the job time, as two jobs compete for the cores. Last, the driver's own cost per file (sha256 of the input and the fsynced manifest line) and
from it a projection of files per minute for N actors on a cluster."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SR = 44100


def _bands():  # viperx' split of 1025 bins
    return tuple([2] * 24 + [4] * 12 + [12] * 8 + [24] * 8 + [48] * 8 + [128, 129])


ROFORMER = {  # the public BS-RoFormer config's STFT and bands, a small body: dim 32, one layer
    "audio": {"chunk_size": 131072, "num_channels": 2, "sample_rate": SR},
    "model": {"dim": 32, "depth": 1, "stereo": True, "num_stems": 1, "time_transformer_depth": 1,
              "freq_transformer_depth": 1, "linear_transformer_depth": 0, "freqs_per_bands": _bands(),
              "dim_head": 16, "heads": 2, "attn_dropout": 0.0, "ff_dropout": 0.0, "flash_attn": True,
              "dim_freqs_in": 1025, "stft_n_fft": 2048, "stft_hop_length": 441, "stft_win_length": 2048,
              "stft_normalized": False, "mask_estimator_depth": 1},
    "training": {"instruments": ["vocals", "other"], "target_instrument": "vocals", "use_amp": False},
    "inference": {"batch_size": 1, "num_overlap": 2},
}


def prepare(work: Path, files: int, seconds: float) -> tuple[list[Path], dict]:
    import numpy as np
    import soundfile as sf
    import torch
    import yaml
    from dsu.families.msst import build_model, load_config
    songs = []
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    for i in range(files):
        mix = 0.3 * np.stack([np.sin(2 * np.pi * (110 + 20 * i) * t), np.sin(2 * np.pi * (220 + 30 * i) * t)])
        mix += 0.05 * rng.standard_normal(mix.shape)
        path = work / "library" / f"album{i % 2}" / f"track{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, mix.T.astype(np.float32), SR, subtype="PCM_16")
        songs.append(path)
    (work / "roformer.yaml").write_text(yaml.safe_dump(ROFORMER, sort_keys=False).replace(
        "freqs_per_bands:", "freqs_per_bands: !!python/tuple\n   ", 0))
    torch.manual_seed(0)
    model = build_model("bs_roformer", load_config(work / "roformer.yaml"))
    torch.save(model.state_dict(), work / "roformer.ckpt")
    return songs, {"dsp": {"model": "dsp"},
                   "roformer": {"model_path": str(work / "roformer.ckpt"), "config_path": str(work / "roformer.yaml"),
                                "model_type": "bs_roformer"}}


def model_compute(request: dict, song: Path, out: Path) -> float:
    """Seconds the loaded model takes for one file in this process, 1 thread, after a warm-up."""
    import torch
    from dsu import families
    from dsu.jobs.separate import separate_file
    torch.set_num_threads(1)
    model = families.load(families.resolve(request, None), torch.device("cpu"))
    separate_file(model, song, out / "warm")
    started = time.perf_counter()
    separate_file(model, song, out / "timed")
    return time.perf_counter() - started


def batch(songs: list[Path], out: Path, request: dict, **how) -> dict:
    from dsu.batch import run
    marks = {"first": None, "last": None}
    t0 = time.monotonic()

    def on_event(event):
        if event["event"] == "start" and marks["first"] is None:
            marks["first"] = time.monotonic()
        if event["event"] == "finished":
            marks["last"] = time.monotonic()

    jobs = []
    summary = run([str(s) for s in songs], out, request, progress=False, **how,
                  on_event=lambda e: (on_event(e), e["event"] == "finished" and jobs.append(e["record"]["elapsed"])))
    assert summary.done == len(songs), summary.failures
    return {"wall": time.monotonic() - t0, "startup": marks["first"] - t0, "steady": marks["last"] - marks["first"],
            "slots": summary.workers, "job": sum(jobs) / len(jobs)}


def driver_cost(songs: list[Path], out: Path) -> float:
    """Seconds the driver spends per finished file: the input's sha256 and one fsynced manifest line."""
    from dsu.batch.manifest import Manifest, sha256_of
    out.mkdir(parents=True, exist_ok=True)
    with Manifest(out) as manifest:
        started = time.perf_counter()
        for song in songs:
            manifest.append({"input": str(song), "sha256": sha256_of(song), "status": "done", "outputs": []})
        return (time.perf_counter() - started) / len(songs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--models", default="dsp,roformer")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dsu-batch-bench-"))
    songs, requests = prepare(work, args.files, args.seconds)
    print(f"{args.files} files x {args.seconds:g} s, {os.cpu_count()} CPUs; work folder {work}")
    paths = {"1 worker": {"jobs": 1, "threads": 1},
             "--jobs 2": {"jobs": 2, "threads": 1},
             "--ray local, 2 actors": {"ray": "local", "ray_actors": 2, "ray_cpus": 1, "threads": 1}}
    print(f"{'model':<9} {'path':<22} {'files/min':>9} {'wall s':>7} {'start s':>7} {'alone s/file':>12} "
          f"{'job s/file':>10} {'overhead s/file':>15}")
    overheads = []
    for name in args.models.split(","):
        compute = model_compute(requests[name], songs[0], work / "compute" / name)
        for label, how in paths.items():
            r = batch(songs, work / "out" / name / label.split()[0].strip("-"), requests[name], **how)
            per_slot = r["steady"] * r["slots"] / args.files
            overhead = per_slot - r["job"]
            if "ray" in how:
                overheads.append((name, overhead, r["job"]))
            print(f"{name:<9} {label:<22} {60 * args.files / r['wall']:>9.1f} {r['wall']:>7.1f} {r['startup']:>7.1f} "
                  f"{compute:>12.2f} {r['job']:>10.2f} {overhead:>15.2f}", flush=True)
    driver = driver_cost(songs, work / "driver")
    print(f"driver per file (sha256 of a {args.seconds:g} s input + fsynced manifest line): {1000 * driver:.1f} ms "
          f"-> at most {60 / driver:,.0f} files/min through one driver")
    print("projection, files/min with N actors = min(N x 60 / (job + overhead), 60 / driver):")
    for name, overhead, compute in overheads:
        per_file = compute + max(overhead, 0.0)
        cells = ", ".join(f"N={n}: {min(n * 60 / per_file, 60 / driver):,.0f}" for n in (1, 8, 32, 128, 512))
        print(f"  {name}: {cells}")


if __name__ == "__main__":
    main()
