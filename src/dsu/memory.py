"""Memory a job will need, checked before it allocates: each family estimates the peak of one job from
its options, the model and the input's length (`Separator.memory_estimate`), and a job whose estimate
exceeds what the machine has available is refused as `out_of_memory` before it starts, instead of
growing the worker until the system kills it."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import DSUError

GiB = 1 << 30
FLOAT = 4  # bytes per float32 sample


@dataclass
class Estimate:
    """Peak bytes of one job: `host` in the worker's RAM (accumulators, whole-file spectrograms,
    decoded audio), `device` where the model runs (inputs and activations of one model call)."""
    host: int
    device: int
    what: str  # the options that drive it, for the error message: "shifts=20, segment=7.8 s"


def available_host() -> int | None:
    """Bytes the system can give without swapping: MemAvailable, else free pages; None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_device(device: torch.device) -> int | None:
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return None


def _size(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / (1 << 20):.0f} MiB"


def check(estimate: Estimate | None, device: torch.device, lower: str) -> None:
    """Refuse the job as `out_of_memory` when `estimate` does not fit (`lower`: what to lower)."""
    if estimate is None:
        return
    host_needed = estimate.host + (estimate.device if device.type != "cuda" else 0)
    host = available_host()
    if host is not None and host_needed > host:
        raise DSUError("out_of_memory", f"this job would need about {_size(host_needed)} of memory "
                                        f"({estimate.what}) but {_size(host)} is available: lower {lower}, or "
                                        "separate a shorter file")
    free = available_device(device)
    if free is not None and estimate.device > free:
        raise DSUError("out_of_memory", f"this job would need about {_size(estimate.device)} of {device.type} "
                                        f"memory ({estimate.what}) but {_size(free)} is free: lower {lower}, "
                                        "or use --device cpu")


def beside(a: Estimate | None, b: Estimate | None) -> Estimate | None:
    """Two jobs stepped side by side (an ensemble's members): their host memory is held at once, the
    device runs one model call at a time. An unknown estimate (None) adds nothing."""
    if a is None or b is None:
        return b if a is None else a
    return Estimate(a.host + b.host, max(a.device, b.device), f"{a.what}; {b.what}")


def span_bytes(sources: int, channels: int, samples: int) -> int:
    """An overlap-add accumulator: the weighted sums of every source and channel over `samples`,
    plus the weights, held while chunks overlap (the engine keeps up to twice a chunk)."""
    return (sources * channels + 1) * 2 * samples * FLOAT
