"""Drop-in command lines of the tools DSU stands in for: `dsu-demucs` (demucs), `dsu-audio-separator`
(python-audio-separator, plus `--apollo`), `dsu-bsroformer` (MSST's inference.py), `dsu-denoise` (the
previous DSU's). Each mirrors its
tool's options, defaults, output names and exit codes, builds the requests the worker takes and runs
them through `dsu.jobs`; options DSU cannot honour are refused by name (exit 2)."""
from __future__ import annotations


def _main(module: str):
    def run(argv: list[str] | None = None) -> int:
        import importlib
        return importlib.import_module(f"{__name__}.{module}").main(argv)
    return run


def _parser(module: str):
    def build():
        import importlib
        return importlib.import_module(f"{__name__}.{module}").build_parser()
    return build


TOOLS = {"dsu-demucs": "demucs", "dsu-audio-separator": "audio_separator", "dsu-bsroformer": "msst",
         "dsu-denoise": "denoise"}
MAINS = {name: _main(module) for name, module in TOOLS.items()}
PARSERS = {name: _parser(module) for name, module in TOOLS.items()}
