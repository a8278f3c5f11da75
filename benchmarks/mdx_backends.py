"""MDX-Net's network on onnxruntime (`backend: torch`) against OpenVINO (`backend: openvino`): a
random-weight U-Net of UVR's MDX-Net size (benchmarks/uvr.py's, dim_f 3072, dim_t 256) exported to
ONNX, one spectrogram per call, the two runtimes interleaved. Usage:
python benchmarks/mdx_backends.py [--runs 3] [--threads 2] [--batch 1]"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from uvr import MDX, mdx_unet

from dsu import backends, families


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mdx-bench.onnx"
        torch.onnx.export(mdx_unet().eval(), (torch.zeros(1, 4, MDX["dim_f"], MDX["dim_t"]),), str(path),
                          input_names=["input"], output_names=["output"], dynamo=False, opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        model = families.load(families.resolve({"model_path": str(path), "primary_stem": "Vocals",
                                                "mdx_n_fft_scale_set": MDX["n_fft"], "mdx_dim_f_set": MDX["dim_f"],
                                                "mdx_dim_t_set": 8}, None), torch.device("cpu"))
        rt = backends.choose("openvino", "float32", device=torch.device("cpu"), family="mdx", threads=args.threads)
        runs = {"onnxruntime": model.network(MDX["dim_t"]), "openvino": model.openvino_network(MDX["dim_t"], rt)}
        spec = torch.randn(args.batch, 4, MDX["dim_f"], MDX["dim_t"])
        outs = {name: run(spec) for name, run in runs.items()}  # warm-up (and OpenVINO's compile)
        err = float((outs["onnxruntime"] - outs["openvino"]).pow(2).sum() / outs["onnxruntime"].pow(2).sum())
        print(f"SNR openvino vs onnxruntime: {-10 * np.log10(max(err, 1e-30)):.1f} dB")
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.runs):
            for name, run in runs.items():
                started = time.perf_counter()
                run(spec)
                times[name].append(time.perf_counter() - started)
        for name, took in times.items():
            print(f"{name:12s} {args.threads} threads, batch {args.batch}: "
                  + ", ".join(f"{t:.3f}" for t in took) + f" s  (median {sorted(took)[len(took) // 2]:.3f})")


if __name__ == "__main__":
    main()
