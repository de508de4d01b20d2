"""Turns whatever stopped a run into ONE line that names the real cause, and its exit code.

Failures rarely arrive as themselves: Beam wraps a worker's exception in its own, DuckDB turns a
full disk into an IOException and then refuses every statement of an invalidated database, and a
clean-up ROLLBACK can raise a second error that hides the first. So this module walks the whole
exception chain (causes, contexts, and the text Beam copies from a worker) and picks the cause a
person can act on: a full disk or a read-only/denied path is a storage problem (exit 2) naming the
path; a batch's directory of batch files that vanished under it is a pipeline failure (exit 4)
naming the directory. Only what it does not recognise is reported as the generic pipeline failure.
"""
from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

EXIT_STORE = 2
EXIT_PIPELINE = 4

# errno -> the words the C library uses for it; Beam and DuckDB often keep only the words
STORAGE_ERRNOS = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EROFS: "Read-only file system",
    errno.EACCES: "Permission denied",
    errno.EPERM: "Operation not permitted",
    errno.EFBIG: "File too large",
}


@dataclass(frozen=True)
class Failure:
    exit_code: int
    line: str


def chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it was raised from or during, once each."""
    seen: set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def error_line(exc: BaseException, limit: int = 500) -> str:
    """``<type>: <first non-empty line>``, cut at ``limit``: how a failed attempt's error is
    recorded (batch_attempts.error) and logged, the same whether the stage failed in this
    process or in the read-ahead worker, which sends only this line back."""
    text = next((line for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}"[:limit]


def _storage_cause(exc: BaseException) -> Optional[tuple[str, Optional[str], BaseException]]:
    """(the C library's words, the path if known, the exception) for a storage errno in the chain."""
    for link in chain(exc):
        if isinstance(link, OSError) and link.errno in STORAGE_ERRNOS:
            return STORAGE_ERRNOS[link.errno], link.filename, link
    for link in chain(exc):
        text = str(link)
        for words in STORAGE_ERRNOS.values():
            if words.lower() in text.lower():
                return words, None, link
    return None


def _free_bytes(directory: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _batch_files_vanished(exc: BaseException, batch_files_root: Path) -> bool:
    """A batch's files disappeared: a missing-file error about the batch files' directory."""
    if batch_files_root.exists() and any(batch_files_root.iterdir()):
        return False  # still there with content: some other missing file
    root = str(batch_files_root)
    for link in chain(exc):
        text = str(link)
        missing = isinstance(link, FileNotFoundError) or "No such file" in text or "No files found" in text \
            or "no staged" in text  # pipelines/local/batch_manifest.py's words for it
        if missing and (root in text or (isinstance(link, OSError) and str(link.filename or "").startswith(root))):
            return True
    return False


def describe(exc: BaseException, db: Path, batch_files_root: Path) -> Optional[Failure]:
    """The one line and exit code for a failure this module recognises, else None."""
    storage = _storage_cause(exc)
    if storage is not None:
        words, path, _link = storage
        where = path or str(db.parent)
        line = f"{words}: cannot write {where} (database {db})"
        if words == STORAGE_ERRNOS[errno.ENOSPC]:
            free = _free_bytes(db.parent)
            if free is not None:
                line += f"; {free} bytes free on its filesystem"
        return Failure(EXIT_STORE, line + "; the failing batch was not landed")
    if _batch_files_vanished(exc, batch_files_root):
        return Failure(EXIT_PIPELINE, f"the batch files directory {batch_files_root} vanished during a batch "
                                      f"(removed by another process?); that batch was not landed, run again")
    return None
