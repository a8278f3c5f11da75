"""How this process runs: from a Python installation, or frozen into DSU's folder of executables
(cx_Freeze, `freeze/build.py`). Code that must behave differently when frozen asks `is_frozen()`.

A frozen executable is also `sys.executable`, so any library that starts "Python" with
`sys.executable -c CODE` (multiprocessing's helpers, torch's compile workers, build tools) starts DSU
instead. `frozen_main` makes that safe: multiprocessing children run and exit, any other interpreter
command line is refused at once, before torch is imported and before stdin is read."""
from __future__ import annotations

import importlib
import os
import sys

# Python's own command-line switches; DSU's commands use long options, `-h` aside.
_INTERPRETER_SWITCHES = frozenset("bBcdEhiImOPqRsSuvVWxX")
_INTERPRETER_LONG_OPTIONS = frozenset({"--check-hash-based-pycs", "--help-env", "--help-xoptions",
                                       "--help-all", "--multiprocessing-fork"})


def is_frozen() -> bool:
    """True inside the frozen executables; torch.compile and anything else that spawns a Python
    interpreter must not be used then."""
    return bool(getattr(sys, "frozen", False))


def interpreter_argv(args: list[str]) -> str | None:
    """The first argument that only makes sense to a Python interpreter (`-c`, `-m`, `-I`, `-X dev`,
    a `.py` script ...), or None when `args` may be DSU's own command line."""
    for i, arg in enumerate(args):
        if arg in _INTERPRETER_LONG_OPTIONS:
            return arg
        if i == 0 and arg.endswith((".py", ".pyc", ".pyz")):
            return arg
        if arg == "-h" or not arg.startswith("-") or arg.startswith("--"):
            return None  # Python's switches come first; from here on it is DSU's command line
        if set(arg[1:2]) <= _INTERPRETER_SWITCHES:
            return arg
    return None


def frozen_main(prog: str, entry_point: str) -> None:
    """Run console script `entry_point` ("module:function") as the frozen executable `prog`."""
    refused = interpreter_argv(sys.argv[1:])
    if refused is not None:
        print(f"{prog}: refusing the Python interpreter argument {refused!r}: this is a DSU executable, "
              f"not a Python interpreter; see `{prog} --help`", file=sys.stderr)
        raise SystemExit(2)
    # torch.compile would start compile workers as `sys.executable`: keep it off in every library too
    os.environ["TORCH_COMPILE_DISABLE"] = "1"
    module, _, function = entry_point.partition(":")
    raise SystemExit(getattr(importlib.import_module(module), function)())
