"""The one mapping from what a job raises to the coded error it answers with: a cancel, running out
of memory, a file the system refused to write. Every job, and the worker around them, words these
here, so a failure reads the same whichever job or front end met it; what a job adds is its own hint
(what to lower when memory runs out) and its own name ("the job", "the ensemble")."""
from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import torch

from .. import engine
from ..errors import DSUError

WRITE_ERRORS = (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
# the hint for memory that ran out outside a job's own passes (a model load, host memory): the
# worker's, which alone can say what else it holds
GENERAL_HINT = ("out of memory: use a smaller `batch_size`/`segment`, fewer cached models (set_cache_size), "
                "or --device cpu")


def cancelled_error(what: str = "the job", when: str | None = None) -> DSUError:
    """`cancelled`: `what` was cancelled `when` ("before it started"), else while it worked, its output dropped."""
    if when:
        return DSUError("cancelled", f"{what} was cancelled {when}")
    return DSUError("cancelled", f"{what} was cancelled; none of its output was kept")


def stop_if_cancelled(cancelled: Callable[[], bool] | None, when: str | None = None, what: str = "the job") -> None:
    """Raise `cancelled_error(what, when)` when the job's cancel check answers true."""
    if cancelled is not None and cancelled():
        raise cancelled_error(what, when)


def coded(error: BaseException, lower: str | None = None, what: str = "the job") -> DSUError | None:
    """The coded error `error` stands for, None when it is none of these (a bug: the caller's `internal`,
    or an exit that must go on up). `lower`: what this job would lower when the device runs out of memory
    in its passes; without it the worker's general hint."""
    if isinstance(error, DSUError):
        return error
    if isinstance(error, engine.Cancelled):
        return cancelled_error(what)
    if isinstance(error, torch.OutOfMemoryError) and lower is not None:
        return DSUError("out_of_memory", f"the device ran out of memory: lower {lower}, or use --device cpu")
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return DSUError("out_of_memory", GENERAL_HINT)
    if isinstance(error, WRITE_ERRORS):
        return DSUError("bad_value", f"cannot write {error.filename}: {error.strerror}; choose another output folder")
    return None


def reraise(error: BaseException, lower: str | None = None, what: str = "the job") -> NoReturn:
    """Raise the coded form of `error` (caught by the caller), or `error` itself when it has none."""
    mapped = coded(error, lower, what)
    if mapped is None or mapped is error:
        raise error
    raise mapped from None
