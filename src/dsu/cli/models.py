"""`dsu models list|info|download|verify|remove`: find, choose and install models by name."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..catalog import catalog as catalogs
from ..catalog import store
from ..errors import DSUError
from . import separate as separate_cli

EXIT_FAILED = 1


def add_parser(subparsers) -> None:
    where = store.default_models_dir()
    models = subparsers.add_parser(
        "models", help="find, download and check models by name",
        description=f"Models by name. The models dir is --models-dir, else $DSU_MODELS, else {where}; the "
                    "catalog is --catalog FILE|URL, else $DSU_CATALOG, else the one shipped with DSU.")
    sub = models.add_subparsers(dest="models_command", required=True)

    def common(p, catalog: bool = True):
        p.add_argument("--models-dir", type=Path, default=None, help=f"default: $DSU_MODELS or {where}")
        if catalog:
            p.add_argument("--catalog", default=None, metavar="FILE|URL",
                           help="use this catalog instead of the shipped one (default: $DSU_CATALOG)")

    listing = sub.add_parser("list", help="installed and available models")
    common(listing)
    listing.add_argument("--available", action="store_true", help="only catalog models (installed or not)")
    listing.add_argument("--installed", action="store_true", help="only models that are installed")
    listing.add_argument("--stems", metavar="STEM", help="only models that write STEM (or are for it)")
    listing.add_argument("--family", metavar="F", help="only this family or type (demucs, msst, bs_roformer, vr, ...)")
    listing.add_argument("--json", action="store_true", help="one JSON array")

    info = sub.add_parser("info", help="everything the catalog says about a model")
    common(info)
    info.add_argument("name")
    info.add_argument("--json", action="store_true")

    download = sub.add_parser("download", help="download, verify and install models")
    common(download)
    download.add_argument("names", nargs="+", metavar="NAME")
    download.add_argument("--timeout", type=float, default=30.0,
                          help="seconds a read may stall, and in which at least 1 KiB/s must arrive (default 30)")
    download.add_argument("--retries", type=int, default=5, help="network failures in a row before giving up")
    download.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    verify = sub.add_parser("verify", help="check installed files against the catalog's hashes and the pins")
    common(verify)
    verify.add_argument("names", nargs="*", metavar="NAME", help="default: every installed catalog model")

    remove = sub.add_parser("remove", help="delete a model's files and pins")
    common(remove)
    remove.add_argument("names", nargs="+", metavar="NAME")

    prepare = sub.add_parser("prepare", help="convert a model for OpenVINO ahead of its first job (cached in "
                                             "the models dir)")
    common(prepare)
    prepare.add_argument("model", metavar="NAME|PATH", help="a model name, or a model file")
    prepare.add_argument("--config-path", help="the YAML config published with PATH")
    prepare.add_argument("--model-type", help="architecture of PATH when its name does not tell")
    prepare.add_argument("--option", "-O", action="append", type=separate_cli._option, default=[],
                         metavar="KEY=VALUE", help="model options that set the chunk shape (segment, chunk_size, "
                                                   "batch_size, window_size ...), as the jobs will give them")
    separate_cli.add_backend_arguments(prepare)
    prepare.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    prepare.add_argument("--threads", type=int, default=None, help="CPU threads the jobs will run with")
    models.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        catalog = catalogs.load(args.catalog)
        for line in catalog.errors:
            print(f"dsu: catalog entry left out: {line}", file=sys.stderr)
        models_dir = args.models_dir or store.default_models_dir()
        return COMMANDS[args.models_command](args, catalog, models_dir)
    except DSUError as e:
        print(f"dsu: {e.code}: {e.message}", file=sys.stderr)
        return EXIT_FAILED


def _matches(row: dict, args) -> bool:
    if args.family and args.family.lower() not in (row.get("family"), row.get("type")):
        return False
    if args.stems:
        wanted = args.stems.lower()
        if wanted not in [s.lower() for s in row.get("stems", [])] + [p.lower() for p in row.get("purpose", [])]:
            return False
    return not (args.installed and not row["installed"])


def list_command(args, catalog, models_dir: Path) -> int:
    rows = [store.describe(e, models_dir) for e in catalog]
    if not args.available:
        from .. import families
        for found in families.list_models(models_dir):
            entry = catalog.find(found.get("file") or found["name"])
            if entry is None or not (entry.name == found["name"] or store.installed(entry, models_dir)):
                # else its catalog row says it; the fields the catalog would give, so every row has them
                rows.append({"type": found["family"], "sdr": None, "purpose": [], "aliases": [], "description": "",
                             **found, "installed": True, "size": None})
    rows = [r for r in rows if _matches(r, args)]
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    columns = "{:<36} {:<18} {:<9} {:>9} {:<8} {}"
    print(columns.format("NAME", "TYPE", "INSTALLED", "SIZE", "SDR", "STEMS"))  # a pipe gets it too: `| column -t`
    for r in rows:
        size = f"{r['size'] / 1e6:,.0f} MB" if r.get("size") else "-"
        sdr = r.get("sdr")
        sdr = f"{sdr:.2f}" if isinstance(sdr, (int, float)) else ("per stem" if sdr else "-")
        print(columns.format(r["name"], r.get("type") or r["family"], "installed" if r["installed"] else "-", size,
                             sdr, ", ".join(r.get("stems", []))))
    return 0


def info_command(args, catalog, models_dir: Path) -> int:
    entry = catalog.get(args.name)
    row = {**store.describe(entry, models_dir), "license": entry.license, "source": entry.source,
           "checkpoint": entry.checkpoint, "config": entry.config,
           "files": [{"path": f.path, "url": f.url, "size": f.size, "sha256": f.sha256,
                      "sha256_prefix": f.sha256_prefix, "installed_at": str(store.file_path(models_dir, f))}
                     for f in entry.files],
           "download": store.download_command(entry.name, args.models_dir)}
    if args.json:
        print(json.dumps(row, indent=1))
        return 0
    for key, value in row.items():
        if key == "files":
            for f in value:
                print(f"file:        {f['path']}  {f['size'] or '?'} bytes  sha256 "
                      f"{f['sha256'] or (f['sha256_prefix'] + '...' if f['sha256_prefix'] else 'unpublished')}\n"
                      f"             {f['url']}")
        elif value not in (None, [], ""):
            print(f"{key + ':':<12} {', '.join(map(str, value)) if isinstance(value, list) else value}")
    return 0


class Bar:
    """One tqdm bar per file on a terminal; on a log, whole lines at most every 10 % or 10 s, as
    `dsu separate` writes its progress there (a bar's redraws would pile up in the log)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar: Any = None  # the current file's tqdm bar
        self.path: str | None = None
        self.terminal = sys.stderr.isatty()
        self.last = (0.0, -1.0)  # time and fraction of the last plain line

    def __call__(self, path: str, done: int, total, speed: float) -> None:
        if not self.enabled:
            return
        if not self.terminal:
            return self._plain(path, done, total)
        from tqdm import tqdm
        if path != self.path or self.bar is None:  # a new file, or one whose bar a retry line closed
            self.close()
            self.path = path
            self.bar = tqdm(total=total, desc=path, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                            leave=True)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _plain(self, path: str, done: int, total) -> None:
        from .progress import PLAIN_SECONDS, PLAIN_STEP
        now = time.monotonic()
        if path != self.path:
            self.path, self.last = path, (now, -1.0)
        fraction = done / total if total else 0.0
        last_time, last_fraction = self.last
        finished = bool(total) and done >= total
        if not finished and fraction - last_fraction < PLAIN_STEP and now - last_time < PLAIN_SECONDS:
            return
        if finished and last_fraction >= 1.0:
            return
        self.last = (now, fraction)
        size = f"{done / 1e6:,.1f} of {total / 1e6:,.1f} MB ({fraction * 100:.0f} %)" if total else \
            f"{done / 1e6:,.1f} MB"
        print(f"dsu: {path}: {size}", file=sys.stderr, flush=True)


def download_command(args, catalog, models_dir: Path) -> int:
    if not 0 < args.timeout < float("inf"):
        raise DSUError("bad_value", f"--timeout {args.timeout:g}: give a positive number of seconds")
    if args.retries < 0:
        raise DSUError("bad_value", f"--retries {args.retries}: give 0 or more")
    entries = [catalog.get(name) for name in args.names]  # every name known before anything is fetched
    for entry in entries:
        bar = Bar(not args.quiet)

        def retry(path: str, n: int, most: int, why: str, wait: float) -> None:
            bar.close()  # noqa: B023 -- called during this entry's install; a bar redrawn over the line would hide it
            print(f"dsu: {path}: {why}; retry {n} of {most} in {wait:.1f} s", file=sys.stderr, flush=True)

        try:
            done = store.install(entry, models_dir, on_progress=bar, on_retry=retry, timeout=args.timeout,
                                 retries=args.retries)
        finally:
            bar.close()
        for path in done.paths:
            print(path, file=sys.stdout if getattr(args, "print_paths", True) else sys.stderr)
        if not args.quiet:
            state = f"downloaded {done.downloaded / 1e6:,.1f} MB" if done.downloaded else "already installed"
            pinned = f"; pinned {len(done.pinned)} hash(es) in {store.LOCK_FILE}" if done.pinned else ""
            print(f"{entry.name}: installed and verified in {models_dir} ({state}{pinned})", file=sys.stderr)
    return 0


def download_missing(name: str, models_dir: Path, quiet: bool = False) -> int:
    """`dsu separate --download`: install `name` when it is a catalog model not installed yet."""
    try:
        catalog = store.current_catalog()
        entry = catalog.find(name)
        if entry is None or store.installed(entry, models_dir):
            return 0
        args = argparse.Namespace(names=[entry.name], timeout=30.0, retries=5, quiet=quiet, print_paths=False)
        return download_command(args, catalog, models_dir)
    except DSUError as e:
        print(f"dsu: {e.code}: {e.message}", file=sys.stderr)
        return EXIT_FAILED


def verify_command(args, catalog, models_dir: Path) -> int:
    entries = [catalog.get(n) for n in args.names] if args.names else \
        [e for e in catalog if store.installed(e, models_dir)]
    failed = 0
    for entry in entries:
        for path, state in store.verify(entry, models_dir):
            print(f"{entry.name}: {path}: {state}")
            failed += state not in ("ok",) and not state.startswith("unpinned")
    if not entries:
        print(f"no catalog model is installed in {models_dir}", file=sys.stderr)
    return EXIT_FAILED if failed else 0


def remove_command(args, catalog, models_dir: Path) -> int:
    for name in args.names:
        entry = catalog.get(name)
        for path in store.remove(entry, models_dir, catalog):
            print(f"removed {path}")
    return 0


def prepare_command(args, catalog, models_dir: Path) -> int:
    from ..cache import ModelCache
    from ..jobs import models as model_jobs
    from ..jobs import prepare
    from ..jobs._pipeline import runtime_for
    from . import _runner as runner
    path = Path(args.model)
    request = {"model_path": str(path), "config_path": args.config_path, "model_type": args.model_type} \
        if path.is_file() else {"model": args.model}
    cache = ModelCache(runner.setup_device(args.device, args.threads), max_models=1)
    ref = model_jobs.resolve({k: v for k, v in request.items() if v is not None}, models_dir)
    model, _ = model_jobs.load(ref, cache, lambda status, **fields: None)
    options, ignored = model_jobs.family_options(model, {"backend": args.backend or "openvino",
                                                         **separate_cli.backend_request(args), **dict(args.option)})
    if ignored:
        raise DSUError("bad_value", f"{ref.name} ({ref.family}) takes no option {', '.join(ignored)}")

    def say(status: str, **fields) -> None:
        if fields.get("stage") == "converting":
            print(f"converting {fields['core']} (minutes for a large model) ...", file=sys.stderr)
    answer = prepare.prepare(model, options, runtime_for(model, options, models_dir, say))
    for line in answer.get("warnings", []):
        print(f"dsu: warning: {line}", file=sys.stderr)
    print(f"{ref.name}: {answer['backend']} {answer['precision']} ready in {answer['elapsed']} s "
          f"(cached under {models_dir / '.cache'})")
    return 0


COMMANDS = {"list": list_command, "info": info_command, "download": download_command, "verify": verify_command,
            "remove": remove_command, "prepare": prepare_command}
