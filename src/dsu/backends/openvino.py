"""A core run by OpenVINO's CPU plugin: converted from the torch module once per input shape (the
batch left dynamic), cached on disk, compiled with the job's precision and threads."""
from __future__ import annotations

import re
import time
import warnings
from typing import Any

import numpy as np
import torch

from . import Runtime, autocast, ir_cache

_PRECISION = {"float32": "f32", "bfloat16": "bf16"}
PROBE_FRAMES = 16  # frames a shape-generic core is traced on
_core: Any = None


def _ov():
    import openvino
    return openvino


def _ov_core():
    global _core
    if _core is None:
        _core = _ov().Core()
    return _core


class _Traced(torch.nn.Module):
    """The core as a module's forward, which is what the converter traces."""

    def __init__(self, net: torch.nn.Module, fn):
        super().__init__()
        self.net = net
        self._fn = fn

    def forward(self, *xs):
        return self._fn(*xs)


def compile_options(runtime: Runtime) -> dict[str, Any]:
    """f32 asked for explicitly: the CPU plugin defaults to bf16 on AMX machines. No pinning, so N
    workers on one machine share the cores their thread counts divide between them."""
    return {"INFERENCE_PRECISION_HINT": _PRECISION[runtime.precision],
            "INFERENCE_NUM_THREADS": int(runtime.threads or torch.get_num_threads()),
            "ENABLE_CPU_PINNING": False, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}


def _reason(e: Exception) -> str:
    """The converter's own words for why, without its source locations: the unconverted ops when it
    names them."""
    text = str(e)
    ops = sorted(set(re.findall(r"\b(?:aten|prim|torch)::\w+", text)))
    if ops:
        return "no conversion for " + ", ".join(ops[:6])
    lines = [line.strip() for line in text.splitlines() if line.strip() and "failed at src/" not in line]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


class CompiledCore:
    """Calls like the core: torch tensors in, torch float32 tensors out (a tuple when the core
    returns one). A network the converter cannot take runs on torch, said once in the job's warnings."""

    def __init__(self, net: torch.nn.Module, fn, runtime: Runtime, identity: str | None, name: str):
        self.net, self.fn, self.identity, self.name = net, fn, identity, name
        self.runtime = runtime
        self.nbytes = 0
        self.failed: str | None = None
        self._compiled: dict[tuple, Any] = {}
        self._tuple = False

    def bind(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def __call__(self, *xs: torch.Tensor):
        if self.failed is None:
            shapes = tuple((tuple(x.shape[1:]), str(x.dtype).removeprefix("torch.")) for x in xs)
            request = self._compiled.get(shapes)
            if request is None:
                request = self._prepare(xs, shapes)
            if request is not None:
                return self._infer(request, xs)
        self.runtime.fell_back = True
        self.runtime.warn(f"OpenVINO could not convert {self.name} ({self.failed}): it ran on torch")
        with autocast(torch.device("cpu"), self.runtime.precision):
            y = self.fn(*xs)
        return tuple(t.float() for t in y) if isinstance(y, tuple) else y.float()

    def _infer(self, request, xs):
        request.infer([np.ascontiguousarray(x.detach().cpu().numpy()) for x in xs])
        outs = tuple(torch.from_numpy(np.array(request.get_output_tensor(i).data, dtype=np.float32))
                     for i in range(len(request.model_outputs)))
        return outs if self._tuple else outs[0]

    def _prepare(self, xs, shapes):
        """Load (or convert and store) and compile the network for these input shapes."""
        ov, runtime = _ov(), self.runtime
        started = time.perf_counter()
        root = ir_cache.folder(runtime.cache_dir) if runtime.cache_dir is not None else None
        entry_key = ir_cache.key(self.identity, self.name, shapes, ov.__version__) if self.identity else None
        model = None
        if root is not None and entry_key is not None:
            try:
                found = ir_cache.lookup(root, entry_key)
            except ir_cache.Corrupt as e:
                runtime.warn(str(e))
                found = None
            if found is not None:
                self._say("loading", started)
                model = _ov_core().read_model(str(found[0]), str(found[1]))
        if model is None:
            self._say("converting", started)
            try:
                model = self._convert(xs)
            except Exception as e:  # the converter's failures have no common type
                self.failed = _reason(e)
                return None
            if root is not None and entry_key is not None:
                ir_cache.store(root, entry_key, lambda xml: ov.save_model(model, str(xml), compress_to_fp16=False))
        self._tuple = len(model.outputs) > 1
        compiled = _ov_core().compile_model(model, "CPU", compile_options(runtime))
        request = compiled.create_infer_request()
        self.nbytes += sum(op.get_byte_size() for op in model.get_ops() if op.get_type_name() == "Constant")
        self._compiled[shapes] = request
        self._say("ready", started)
        return request

    def _convert(self, xs):
        """The core converted for inputs shaped as `xs` (batch dynamic). A core whose module declares
        `core_time_axes` is traced on a few frames instead (tracing runs the network, and at a
        published RoFormer's 8 s chunk that alone takes minutes), checked against torch at another
        length, then fixed to the job's shape; a core that fails the check is traced at full size."""
        axes = getattr(self.net, "core_time_axes", None) if self.fn == getattr(self.net, "core", None) else None
        if axes and all(x.shape[a] > 2 * PROBE_FRAMES for x, a in zip(xs, axes, strict=True)):
            model = self._trace([x.narrow(a, 0, PROBE_FRAMES) for x, a in zip(xs, axes, strict=True)], axes)
            if self._agrees(model, [x.narrow(a, 0, 2 * PROBE_FRAMES - 3) for x, a in zip(xs, axes, strict=True)]):
                model.reshape({i: _ov().PartialShape([-1, *x.shape[1:]]) for i, x in enumerate(xs)})
                return model
        return self._trace(xs, None)

    def _trace(self, xs, axes):
        ov = _ov()
        traced = _Traced(self.net, self.fn).eval()
        spec = []
        for i, x in enumerate(xs):
            dims = [-1, *x.shape[1:]]
            if axes is not None:
                dims[axes[i]] = -1
            spec.append((ov.PartialShape(dims), ov.Type.f32 if x.dtype == torch.float32 else ov.Type.dynamic))
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer's warnings about shapes read as Python numbers: every shape here is the job's own
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            example = tuple(xs) if len(xs) > 1 else xs[0]
            return ov.convert_model(traced, example_input=example, input=spec)

    def _agrees(self, model, xs) -> bool:
        """Whether the model traced on short inputs gives torch's float32 output at another length
        (a size the trace took as a constant would not)."""
        try:
            compiled = _ov_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            got = compiled([np.ascontiguousarray(x.detach().numpy()) for x in xs])
            with torch.no_grad():
                want = self.fn(*xs)
        except Exception:  # any failure here means: trace at full size instead
            return False
        want = want if isinstance(want, tuple) else (want,)
        for i, w in enumerate(want):
            w = w.double()
            g = torch.from_numpy(np.asarray(got[i])).double()
            if g.shape != w.shape or float(((w - g) ** 2).sum()) > float((w ** 2).sum()) * 1e-10:
                return False
        return True

    def _say(self, stage: str, started: float) -> None:
        if self.runtime.notify is not None:
            self.runtime.notify("preparing", backend="openvino", stage=stage, core=self.name,
                                elapsed=round(time.perf_counter() - started, 3))
