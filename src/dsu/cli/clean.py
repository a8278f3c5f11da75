"""`dsu clean DIR`: remove what killed DSU processes left in a folder (the CLI side of the worker's
`clean` command; the rules are `dsu.tempfiles`')."""
from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "clean", help="remove partial files of killed DSU jobs from a folder",
        description="Remove the partial files under DIR whose owner process is gone (never a running job's), "
                    "owner-less partials of older DSU versions, the lock files of killed downloads (no process "
                    "holds them), and DSU's decoded input copies in the temp dir whose owner is gone. A partial "
                    "of another machine or PID namespace (a shared NFS folder, a container), whose owner cannot "
                    "be checked from here, is removed only once nothing has written to it for a day.")
    parser.add_argument("dir", metavar="DIR", help="the output folder to clean (with its subfolders)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not list the removed files")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..errors import DSUError
    from ..jobs import clean

    try:
        cleaned = clean.run({"dir": args.dir})
    except DSUError as e:
        print(f"dsu: {e.code}: {e.message}", file=sys.stderr)
        return 1
    if not args.quiet:
        for path in cleaned["removed"]:
            print(path)
        print(f"dsu: removed {cleaned['count']} file(s)", file=sys.stderr)
    return 0
