"""The worker's `download_model` job: a catalog model into the models dir, with byte progress and cancel."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..catalog import catalog as catalogs
from ..catalog import store


def download_model(fields: dict, models_dir: Path | None, emit: Callable[..., None],
                   cancelled: Callable[[], bool] | None = None) -> dict:
    """`fields`: the validated request (`model`, `models_dir`, `catalog`, `read_timeout`, `retries`).
    Emits `progress` with the bytes of the file being fetched; returns the `model_downloaded` fields."""
    started = time.perf_counter()
    catalog = catalogs.load(fields.get("catalog"), cancelled)
    entry = catalog.get(fields["model"])
    target = Path(fields["models_dir"]) if fields.get("models_dir") else (models_dir or store.default_models_dir())
    known = entry.size
    last = {"progress": 0.0, "percent": 0, "bytes_done": 0, "bytes_total": None, "speed": 0}

    def progress(path: str, done: int, total, speed: float) -> None:
        fraction = min(done / total if total else 0.0, 1.0)
        last.update(progress=round(fraction, 4), percent=int(fraction * 100), bytes_done=done, bytes_total=total,
                    speed=round(speed))
        emit("progress", file=path, model=entry.name, **last)

    def retry(path: str, n: int, most: int, why: str, wait: float) -> None:
        emit("progress", file=path, model=entry.name, **last, retry=f"{why}; retry {n} of {most} in {wait:.1f} s")

    done = store.install(entry, target, on_progress=progress, on_retry=retry, cancelled=cancelled,
                         timeout=fields.get("read_timeout", 30.0), retries=fields.get("retries", 5))
    return {"model": entry.name, "models_dir": str(target.resolve()), "paths": [str(p.resolve()) for p in done.paths],
            "downloaded": done.downloaded,
            "size": known if known is not None else sum(p.stat().st_size for p in done.paths),
            "pinned": done.pinned, "elapsed": round(time.perf_counter() - started, 3)}
