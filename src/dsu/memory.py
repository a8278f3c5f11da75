"""Memory a job will need, checked before it allocates: each family estimates the peak of one job from
its options, the model and the input's length (`LoadedModel.memory_estimate`), and a job whose estimate
exceeds what the machine has available is refused as `out_of_memory` before it starts, instead of
growing the worker until the system kills it."""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
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


# ---- the weights a model's config describes -----------------------------------------------------------

MAX_MODULES = 20_000  # submodules of one model: the shipped configs build at most 2906 (a BS-RoFormer)


class _Stop(BaseException):
    """Raised inside a meta build to end it early (a BaseException: model code that catches Exception
    does not swallow it); `reason` is why."""

    def __init__(self, reason: str):
        self.reason = reason


def weight_bytes(factory: Callable[[], torch.nn.Module], what: str, most: int | None = None) -> int | None:
    """Bytes of the parameters and buffers of the module `factory()` builds, counted by building it on
    torch's meta device, which allocates nothing; as soon as more than `most` bytes are registered the
    build stops and that running count is returned. None when the module cannot be built on the meta
    device (the real build then says what is wrong). A config that builds more than MAX_MODULES
    modules is `bad_value`, before it can take minutes."""
    builder = threading.get_ident()
    counts = {"bytes": 0, "modules": 0}

    def on_tensor(module, name, tensor):
        if threading.get_ident() == builder and tensor is not None:
            counts["bytes"] += tensor.numel() * tensor.element_size()
            if most is not None and counts["bytes"] > most:
                raise _Stop("bytes")

    def on_module(module, name, submodule):
        if threading.get_ident() == builder:
            counts["modules"] += 1
            if counts["modules"] > MAX_MODULES:
                raise _Stop("modules")

    hooks = [register(on_tensor) for register in (torch.nn.modules.module.register_module_parameter_registration_hook,
                                                  torch.nn.modules.module.register_module_buffer_registration_hook)]
    hooks.append(torch.nn.modules.module.register_module_module_registration_hook(on_module))
    try:
        with torch.device("meta"):
            module = factory()
    except _Stop as stop:
        if stop.reason == "bytes":
            return counts["bytes"]
        raise DSUError("bad_value", f"{what} has more than {MAX_MODULES} layers and modules, far more than "
                                    "any published model: check the config") from None
    except Exception:  # not buildable on the meta device, or not at all: the real build says which
        return None
    finally:
        for hook in hooks:
            hook.remove()
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def build(factory: Callable[[], torch.nn.Module], device: torch.device, what: str) -> torch.nn.Module:
    """`factory()`, built once its weights are known to fit: `out_of_memory` before anything is
    allocated otherwise. The host holds them twice while a checkpoint loads into them, an
    accelerator once more."""
    host, free = available_host(), available_device(device)
    most = min(n for n in (host and host // 2, free, 1 << 62) if n is not None)
    weights = weight_bytes(factory, what, most)  # a count cut short is still past what fits
    if weights is not None:
        if host is not None and 2 * weights > host:
            raise DSUError("out_of_memory", f"{what} would need at least {_size(2 * weights)} of memory to load "
                                            f"its weights but {_size(host)} is available: check that the config "
                                            "is the one published with the weights, or use a smaller model")
        if free is not None and weights > free:
            raise DSUError("out_of_memory", f"{what} would need at least {_size(weights)} of {device.type} memory "
                                            f"for its weights but {_size(free)} is free: check that the config "
                                            "is the one published with the weights, or use --device cpu")
    return factory()
