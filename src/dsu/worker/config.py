"""A worker's command line. Parsing it imports nothing heavy, so `--help` and argument errors are
instant."""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..device import DEVICES

# the names existing integrations spawn, and the model each uses when a request names none
DEFAULT_MODELS = {"dsu": "dsp", "dsu-demucs": "htdemucs", "dsu-bsroformer": None, "dsu-audio-separator": None,
                  "dsu-denoise": None}
# workers whose own job needs no model: `load_model` naming none answers with theirs, as the previous
# DSU's dsu-denoise did (integrations send it at start-up)
MODEL_FREE = frozenset({"dsu-denoise"})


@dataclass
class WorkerConfig:
    name: str = "dsu"
    models_dir: Path | None = None
    device: str = "auto"
    threads: int | None = None       # None: physical cores
    max_cached_models: int = 2
    max_cache_memory: int | None = None  # bytes; None: a share of the device's memory

    @property
    def default_model(self) -> str | None:
        return DEFAULT_MODELS.get(self.name)

    @property
    def needs_model(self) -> bool:
        return self.name not in MODEL_FREE


def parse_size(text: str) -> int:
    """`512M`, `4G`, `4GiB`, `1.5g` or a number of bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512M or 4G)")
    return int(float(m[1]) * 1024 ** " kmgt".index(m[2] or " "))


def _count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return n


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return n


def add_worker_arguments(parser: argparse.ArgumentParser, name: str = "dsu") -> None:
    parser.add_argument("--worker", action="store_true",
                        help="accepted for compatibility: this program always runs as a worker")
    parser.add_argument("--models-dir", type=Path, default=os.environ.get("DSU_MODELS") or None,
                        help="folder models are looked up in by name (default: $DSU_MODELS)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="cuda > mps > cpu for auto")
    parser.add_argument("--threads", type=_positive, default=None, help="CPU threads (default: physical cores)")
    parser.add_argument("--max-cached-models", type=_count, default=None,
                        help="loaded models kept between jobs; 0 disables the cache (default: the runtime "
                             "policy's, else 2)")
    parser.add_argument("--max-cache-memory", type=parse_size, default=None,
                        help="memory cached models may hold, e.g. 4G (default: half the RAM, 70%% of a GPU's)")
    parser.add_argument("--name", choices=sorted(DEFAULT_MODELS), default=name,
                        help="behave as this worker (sets the default model)")


def config_from(args: argparse.Namespace) -> WorkerConfig:
    cached = args.max_cached_models
    if cached is None:  # the previous DSU's runtime policy file, when there is one
        from .policy import max_cached_models
        cached = max_cached_models(args.name)
    return WorkerConfig(name=args.name, models_dir=args.models_dir, device=args.device, threads=args.threads,
                        max_cached_models=WorkerConfig.max_cached_models if cached is None else cached,
                        max_cache_memory=args.max_cache_memory)


def parse_args(argv: list[str] | None = None, name: str = "dsu") -> WorkerConfig:
    parser = argparse.ArgumentParser(prog=name, description="DSU worker: JSON commands on stdin, one per line; "
                                                            "JSON answers on stdout (see docs/protocol.md)")
    add_worker_arguments(parser, name)
    return config_from(parser.parse_args(argv))


# the worker's own flags (those taking a value, and switches): argv made only of these starts a worker
WORKER_VALUE_FLAGS = ("--models-dir", "--device", "--threads", "--max-cached-models", "--max-cache-memory", "--name")
WORKER_SWITCHES = ("--worker",)


def is_worker_call(argv: list[str]) -> bool:
    """True for no arguments, `--worker` anywhere, or worker flags only; anything else is a drop-in
    command line (`dsu-demucs song.mp3 -n htdemucs`)."""
    if "--worker" in argv:
        return True
    rest = iter(argv)
    for token in rest:
        name = token.split("=", 1)[0]
        if name in WORKER_VALUE_FLAGS:
            if "=" not in token:
                next(rest, None)
        elif token not in WORKER_SWITCHES:
            return False
    return True
