"""Loaded models kept between jobs: least recently used first out, bounded by count and by memory."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import families
from .device import release_cached_memory
from .families import LoadedModel, ModelRef
from .families.packages import mapped_weights

Evicted = Callable[[str], None]  # told the name of each model pushed out


@dataclass
class Entry:
    ref: ModelRef
    model: LoadedModel
    nbytes: int


class ModelCache:
    """`max_models` = 0 disables caching: every job loads its model and drops it afterwards.
    The newest model always stays, even when it alone is over `max_bytes`: evicting the model a job
    is about to use would only load it again. `mmap`: weight files are memory-mapped as they load
    (the worker's `set_storage_type` ssd) rather than read whole first (hdd, the default)."""

    def __init__(self, device: torch.device, max_models: int = 2, max_bytes: int | None = None,
                 mmap: bool = False):
        self.device = device
        self.max_models = max_models
        self.max_bytes = max_bytes
        self.mmap = mmap
        self._entries: OrderedDict[tuple, Entry] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_models > 0

    def get(self, ref: ModelRef, on_evict: Evicted | None = None,
            on_load: Callable[[], None] | None = None) -> tuple[LoadedModel, bool]:
        """The loaded model for `ref` and whether it came from the cache; `on_load` is called
        before a model has to be loaded (it can take a while)."""
        key = ref.cache_key()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry.model, True
        if on_load is not None:
            on_load()
        with mapped_weights(self.mmap):
            model = families.load(ref, self.device)
        if self.enabled:
            with self._lock:
                self._entries[key] = Entry(ref, model, model.nbytes())
                evicted = self._shrink()
            self._announce(evicted, on_evict)
        return model, False

    def contains(self, ref: ModelRef) -> bool:
        with self._lock:
            return ref.cache_key() in self._entries

    def set_limits(self, max_models: int | None = None, max_bytes: int | None = None,
                   on_evict: Evicted | None = None) -> list[str]:
        with self._lock:
            if max_models is not None:
                self.max_models = max_models
            if max_bytes is not None:
                self.max_bytes = max_bytes
            evicted = self._shrink()
        self._announce(evicted, on_evict)
        return evicted

    def clear(self) -> int:
        with self._lock:
            n = len(self._entries)
            self._entries.clear()
        release_cached_memory(self.device)
        return n

    def entries(self) -> list[Entry]:
        """Least recently used first."""
        with self._lock:
            return list(self._entries.values())

    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def _shrink(self) -> list[str]:
        evicted = []
        while self._entries and (
                len(self._entries) > self.max_models
                or (self.max_bytes is not None and len(self._entries) > 1
                    and sum(e.nbytes for e in self._entries.values()) > self.max_bytes)):
            _, entry = self._entries.popitem(last=False)
            evicted.append(entry.model.name)
        return evicted

    def _announce(self, evicted: list[str], on_evict: Evicted | None) -> None:
        if evicted:
            release_cached_memory(self.device)
        if on_evict is not None:
            for name in evicted:
                on_evict(name)
