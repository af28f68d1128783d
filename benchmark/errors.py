"""Errors that carry one clear line naming the file and the cause."""

from __future__ import annotations

from pathlib import Path


class PhbenchError(Exception):
    """Base class: the CLI prints ``str(err)`` as one line and exits non-zero."""


class DataError(PhbenchError):
    """Bad input data: ``DataError(path, cause)`` renders as ``<path>: <cause>``."""

    def __init__(self, path: str | Path, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class RegressionError(PhbenchError):
    """A fresh result left its stored tolerance (``phbench check``)."""


class StoreError(DataError):
    """A stored result, model or cache file that fails its check on read (unreadable, wrong schema, checksum):
    ``StoreError(path, cause, remedy)`` renders as ``<path>: <cause>; <remedy>`` -- one line, never a silent
    wrong table."""

    def __init__(self, path: str | Path, cause: str, remedy: str = "delete it to recompute"):
        self.remedy = remedy
        super().__init__(path, f"{' '.join(cause.split())}; {remedy}")
