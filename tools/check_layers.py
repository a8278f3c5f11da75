"""Check that each module of `src/dsu` imports only its own room and the layers below it.

The layers are docs/architecture.md's table, declared once here (LAYERS, bottom first); the docs
test checks the two agree. Every import counts, function-level ones too. Exit 1 and one line per
import that climbs; `--table` prints the table as Markdown."""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# (layer, rooms, what it knows); a room is a module or package under dsu
LAYERS: list[tuple[str, tuple[str, ...], str]] = [
    ("errors", ("errors",), "the coded errors, how a message quotes a value and speaks a CLI's flags"),
    ("foundations", ("untrusted", "paths", "tempfiles", "memory", "device", "runtime"),
     "untrusted files, safe output paths, partial files, memory checks, devices, frozen or not"),
    ("protocol", ("protocol",), "the request table: every command's fields, types, ranges, defaults"),
    ("models", ("models",), "pure `nn.Module`s, one file per architecture; state-dict keys equal the reference's"),
    ("engine", ("engine",), "chunks, windows, batches, overlap-add, streaming, signals and views over them"),
    ("backends", ("backends",), "what runs a network's core: torch (autocast) or OpenVINO, converted networks "
                                "cached on disk and checked"),
    ("families", ("families",), "how a request names model files, how they load safely, how a model cuts a "
                                "signal into engine passes (UVR tables, VR band sets, weights files)"),
    ("audio", ("audio",), "reading files as signals, writing stems that appear only complete"),
    ("blend", ("blend",), "ensemble rules, the streamed STFT, per-stem blends and file blends"),
    ("catalog", ("catalog",), "models by name: the shipped catalog, verified downloads, the models dir"),
    ("cache", ("cache",), "loaded models kept by a worker, evicted by count and memory"),
    ("jobs", ("jobs",), "one module per worker command: fields in, files and answer fields out"),
    ("worker", ("worker",), "JSON lines, queues, cancel, runtime policy; nothing of tensors' layout"),
    ("client", ("client",), "the Python client of a worker process"),
    ("batch", ("batch",), "many files: inputs, the manifest, pools of workers or Ray actors"),
    ("api", ("api",), "the Python library: models kept loaded in the process, arrays or files in, stems out"),
    ("evaluate", ("evaluate",), "`dsu eval`: MUSDB-style folders, metrics streamed over tracks, tables and plots"),
    ("cli", ("cli",), "`dsu` and its subcommands, the drop-in command lines of the tools DSU stands in for"),
    ("demo", ("demo",), "the README's first run"),
]


# what `dsu/__init__` re-exports lazily (the library's public names), and `python -m dsu` runs (the CLI)
PACKAGE_EXPORTS = ("api", "errors", "cli")


def _room(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "__main__":
        return ""  # the package itself: dsu/__init__ (the version, the library's names) and `python -m dsu`
    return parts[1]


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names] if target == "dsu" else [target]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name == "dsu" or name.startswith("dsu.")]


def problems(src: Path = SRC) -> list[str]:
    level = {room: i for i, (_, rooms, _) in enumerate(LAYERS) for room in rooms}
    level[""] = -1
    out = []
    for path in sorted((src / "dsu").rglob("*.py")):
        rel = path.relative_to(src).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        room = _room(module)
        if room not in level:
            out.append(f"{path.relative_to(src)}: room `{room}` is in no layer of tools/check_layers.py")
            continue
        for line, target in _imports(path, module):
            other = _room(target)
            if other == room or other == "__version__" or level.get(other, -1) < level[room] \
                    or (room == "" and other in PACKAGE_EXPORTS):
                continue
            out.append(f"{path.relative_to(src)}:{line}: {room} (layer {level[room]}) imports {target} "
                       f"(layer {level.get(other, '?')})")
    return out


def table() -> str:
    rows = ["| layer | rooms | knows |", "|---|---|---|"]
    for name, rooms, knows in LAYERS:
        rows.append(f"| {name} | {', '.join(f'`dsu.{r}`' for r in rooms)} | {knows} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print the layer table as Markdown")
    args = parser.parse_args(argv)
    if args.table:
        print(table())
        return 0
    found = problems()
    for line in found:
        print(line)
    print(f"{len(found)} import(s) climb a layer" if found else "layers: every import goes down", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
