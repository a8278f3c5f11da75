"""Where a model's network runs: the backend under the families' model functions.

Every family's network is cut in three: what turns the audio into features (STFTs, padding: torch,
float32, always), the *core* between them (real tensors in, real tensors out: the transformers,
convolutions and mask estimators, where the time goes), and what turns the core's output back into
audio. A backend runs the core: `torch` as the module is (autocast for reduced precision), or
`openvino`, which converts it once per input shape (cached on disk, `dsu.backends.ir_cache`) and runs
the compiled network. `backend: torch, precision: float32` is exactly the eager path, the baseline.
"""
from __future__ import annotations

import functools
import os
import platform
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import DSUError
from ..protocol import BACKENDS, PRECISIONS

# What `backend: auto` runs on a CPU, per family, where OpenVINO measured faster than eager torch in
# float32 (docs/benchmarks.md#cpu-backends: HTDemucs 1.74x, a 6-layer BS-RoFormer 1.18x, MDX-Net's
# ONNX 1.1x against onnxruntime, 2 cores, AVX2); a family not named (VR and Apollo, not yet measured
# at published size) runs on torch.
FASTEST_ON_CPU = {"msst": "openvino", "demucs": "openvino", "mdx": "openvino"}

AUTO_ENV = "DSU_BACKEND"  # what `backend: auto` means on this machine, when set (e.g. torch while testing)

Core = Callable[..., Any]  # tensors -> a tensor or a tuple of tensors
Notify = Callable[..., None]  # notify(status, **fields): a `preparing` message of the job


@dataclass
class Runtime:
    """What runs a job's cores: the backend and precision chosen for it, OpenVINO's threads, where
    converted networks are cached, and what the job is told (a `preparing` status, its warnings)."""
    backend: str = "torch"        # torch | openvino
    precision: str = "float32"    # float32 | float16 | bfloat16
    threads: int | None = None    # None: torch's intra-op threads
    cache_dir: Path | None = None  # None: converted networks are kept in memory only
    notify: Notify | None = None
    warnings: list[str] = field(default_factory=list)
    fell_back: bool = False       # a core OpenVINO could not convert ran on torch

    def fields(self) -> dict[str, str]:
        """What a `done` message says ran."""
        return {"backend": "torch" if self.fell_back else self.backend, "precision": self.precision}

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)


EXACT = Runtime()  # torch float32: the eager path every benchmark compares against


def openvino_version() -> str | None:
    """The installed OpenVINO's version, None when it does not import."""
    try:
        import openvino
    except Exception:  # a broken install is as good as none: the torch path still runs
        return None
    return str(openvino.__version__)


@functools.cache
def native_bfloat16() -> bool:
    """Whether this CPU does bfloat16 arithmetic itself (Intel AMX / AVX512-BF16, AMD Zen 4+, Arm
    BF16); elsewhere bfloat16 is emulated, often slower than float32."""
    if openvino_version() is not None:
        import openvino
        try:
            return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        except Exception:
            pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read(1 << 16)
        return " avx512_bf16" in flags or " amx_bf16" in flags
    except OSError:
        return platform.machine() == "arm64" and platform.system() == "Darwin"  # Apple M2+: most in use


def choose(backend: Any = "auto", precision: Any = "auto", *, device: torch.device, family: str,
           amp: bool = False, threads: int | None = None, cache_dir: Path | None = None,
           notify: Notify | None = None) -> Runtime:
    """The runtime a request's `backend` and `precision` ask for on `device`; `amp`: the model's
    config trains with float16 (MSST's `use_amp`), which `precision: auto` follows on CUDA.
    What this machine cannot run is a `bad_value` naming the field and what it offers."""
    backend = "auto" if backend is None else backend
    precision = "auto" if precision is None else precision
    for name, value, choices in (("backend", backend, BACKENDS), ("precision", precision, PRECISIONS)):
        if value not in choices:
            raise DSUError("bad_value", f"`{name}` must be one of {', '.join(choices)}, not {value!r}")
    if backend == "auto" and os.environ.get(AUTO_ENV):
        backend = os.environ[AUTO_ENV]
        if backend not in BACKENDS:
            raise DSUError("bad_value", f"${AUTO_ENV} must be one of {', '.join(BACKENDS)}, not {backend!r}")
    cpu = device.type == "cpu"
    have_openvino = openvino_version() is not None
    if backend == "openvino":
        if not cpu:
            raise DSUError("bad_value", f"`backend` openvino runs on the CPU, and this worker's device is "
                                        f"{device.type}: use backend torch (or auto), or a CPU worker")
        if not have_openvino:
            raise DSUError("bad_value", "`backend` openvino is not installed on this machine "
                                        "(pip install 'openvino>=2026,<2027'); it offers: torch")
    if precision == "float16" and cpu:
        raise DSUError("bad_value", "`precision` float16 runs on CUDA and MPS; on this CPU choose float32 "
                                    "or bfloat16 (or auto)")
    if backend == "auto":
        backend = FASTEST_ON_CPU.get(family, "torch") if cpu and have_openvino else "torch"
    if precision == "auto":
        precision = "float16" if device.type == "cuda" and amp else "float32"
    emulated = precision == "bfloat16" and cpu and not native_bfloat16()
    if emulated and backend == "openvino":  # its CPU plugin takes the hint only where the CPU has it
        out = Runtime(backend, "float32", threads, cache_dir, notify)
        out.warn("this CPU has no native bfloat16 (AMX, AVX512-BF16): OpenVINO ran float32")
        return out
    out = Runtime(backend, precision, threads, cache_dir, notify)
    if emulated:
        out.warn("this CPU has no native bfloat16 (AMX, AVX512-BF16): bfloat16 is emulated and can be "
                 "slower than float32")
    return out


def autocast(device: torch.device, precision: str):
    """torch's autocast context for `precision` on `device` (none for float32)."""
    if precision == "float32":
        return nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, precision))


def runner(net: Any, runtime: Runtime, identity: str | None, core: Core | None = None,
           name: str = "core") -> Core:
    """What runs `core` (default `net.core`) for `runtime`: the module under autocast on torch, a
    converted copy on OpenVINO. `identity` keys the on-disk cache (`ir_cache.identity`); the runner
    keeps what it compiled for later calls of the same shapes."""
    fn = core or net.core
    if runtime.backend == "openvino":
        from .openvino import CompiledCore
        return CompiledCore(net, fn, runtime, identity, name)
    params = net.parameters() if isinstance(net, torch.nn.Module) else iter(())
    device = next(iter(params), torch.empty(0)).device

    def run(*xs):
        with autocast(device, runtime.precision):
            y = fn(*xs)
        return tuple(t.float() for t in y) if isinstance(y, tuple) else y.float()
    return run if runtime.precision != "float32" else fn


def extra_memory(weights: int) -> int:
    """Host memory OpenVINO adds to a job beside the torch model of `weights` bytes: the traced graph
    and the converted model while converting (about two copies of the weights), then the compiled one."""
    return 3 * weights


class Cores:
    """A loaded model's runners, one per (runtime, core name), kept while the model stays loaded so a
    worker's next job runs the already compiled network."""

    def __init__(self) -> None:
        self._runners: dict[tuple, Core] = {}

    def get(self, net: Any, runtime: Runtime, identity: str | None, core: Core | None = None,
            name: str = "core") -> Core:
        key = (id(net), name, runtime.backend, runtime.precision, runtime.threads, runtime.cache_dir)
        found = self._runners.get(key)
        if found is None:
            found = self._runners[key] = runner(net, runtime, identity, core, name)
        if hasattr(found, "bind"):  # this job's messages and warnings
            found.bind(runtime)
        return found

    def nbytes(self) -> int:
        return sum(getattr(r, "nbytes", 0) for r in self._runners.values())
