"""The worker's `clean` command: what killed DSU processes left, removed."""
from __future__ import annotations

from pathlib import Path

from .. import paths, tempfiles
from ..errors import DSUError


def run(fields: dict) -> dict:
    """Remove what killed DSU processes left: partial files in `dir` (and its subfolders) whose owner
    is gone, older DSU versions' owner-less partials there, the locks of killed downloads, converted
    networks half written under `.cache/openvino`, and DSU's decoded input copies in the temp dir whose
    owner is gone. Never a live job's file."""
    from ..backends import ir_cache
    from ..catalog.download import clean_locks
    folder = Path(paths.plain_path(fields["dir"], "dir"))
    if not folder.is_dir():
        raise DSUError("input_not_found", f"`dir` {folder} is not a folder")
    removed = tempfiles.clean_folder(folder, recursive=True, legacy=True) + clean_locks(folder) + \
        ir_cache.clean(ir_cache.folder(folder)) + tempfiles.clean_decode_files()
    return {"dir": str(folder.resolve()), "removed": [str(p) for p in removed], "count": len(removed)}
