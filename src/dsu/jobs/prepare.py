"""Converting a model's networks ahead of time (`dsu models prepare`): what the first job of a worker
would otherwise do before its first chunk, so that worker starts in seconds."""
from __future__ import annotations

import time

import torch

from .. import backends
from ..engine import TensorSignal
from ..families import LoadedModel

SECONDS = 30.0  # long enough that every pass has a whole batch of full-size chunks


def prepare(model: LoadedModel, options: dict, runtime: backends.Runtime) -> dict:
    """Each pass's first batch (the chunk shape every job with these options runs) through the model
    on a silent signal, so each network is converted and cached, or found in the cache and compiled."""
    started = time.perf_counter()
    signal = TensorSignal(torch.zeros(model.audio_channels, int(SECONDS * model.samplerate)))
    for p in model.passes(signal, runtime=runtime, **options):
        if not p.chunks:
            continue
        size = p.chunks[0].size
        batch = [c for c in p.chunks[:p.batch_size] if c.size == size]
        x = torch.stack([p.signal.read(c.start, c.start + c.size) for c in batch])
        with torch.inference_mode():
            p.model(x, lambda fraction: None) if p.steps else p.model(x)
    return {**runtime.fields(), "elapsed": round(time.perf_counter() - started, 3),
            **({"warnings": runtime.warnings} if runtime.warnings else {})}
