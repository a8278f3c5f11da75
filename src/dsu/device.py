"""Which device and how many threads a process computes with. torch is imported by the functions
that need it: command lines read `DEVICES` for their --device before anything heavy loads."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

KINDS = ("cpu", "cuda", "mps")
DEVICES = ("auto", *KINDS)  # auto: cuda > mps > cpu


def _mps_available() -> bool:
    import torch
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def choose_device(wanted: str = "auto") -> tuple[torch.device, str | None]:
    """The device to use (cuda > mps > cpu for `auto`) and, when `wanted` cannot be had, why it fell
    back to the CPU; a worker started for a GPU should still answer rather than die."""
    import torch
    if wanted not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {wanted!r}")
    if wanted in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda"), None
    if wanted in ("auto", "mps") and _mps_available():
        return torch.device("mps"), None
    if wanted in ("auto", "cpu"):
        return torch.device("cpu"), None
    return torch.device("cpu"), f"{wanted} was asked for but is not available in this torch build or machine: using cpu"


def physical_cores() -> int:
    """Physical cores this process may run on: hyper-threads share a core's arithmetic units, so
    more intra-op threads than cores only adds contention."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # macOS, Windows
        allowed = None
    cores = _linux_cores(allowed) if sys.platform.startswith("linux") else None
    if cores:
        return cores
    return max(1, len(allowed) if allowed is not None else (os.cpu_count() or 1))


def _linux_cores(allowed: set[int] | None) -> int | None:
    """Distinct (package, core) pairs among the allowed CPUs, from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    pairs = set()
    for block in text.strip().split("\n\n"):
        info = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        if "processor" not in info or "core id" not in info:
            return None  # this kernel does not say which CPUs share a core
        if allowed is not None and int(info["processor"]) not in allowed:
            continue
        pairs.add((info.get("physical id", "0"), info["core id"]))
    return len(pairs) or None


def set_threads(threads: int | None) -> int:
    """Use `threads` intra-op threads (physical cores when None) and return the number."""
    import torch
    n = threads or physical_cores()
    torch.set_num_threads(n)
    return n


def memory_budget(device: torch.device) -> int:
    """Bytes the model cache may hold by default: half the machine's memory (a third of it on
    Apple's shared-memory GPUs, which also hold the activations), or 70% of a CUDA device's."""
    if device.type == "cuda":
        import torch
        return int(0.7 * torch.cuda.get_device_properties(device).total_memory)
    total = total_memory()
    return total // 3 if device.type == "mps" else total // 2


def total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def release_cached_memory(device: torch.device) -> None:
    """Give freed allocator blocks back so the next model (or another process) can use them."""
    import torch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and _mps_available():
        torch.mps.empty_cache()
