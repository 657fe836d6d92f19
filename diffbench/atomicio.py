"""Atomic file writes (temporary file beside the target, fsync, rename) and clean-up after killed writers.

A temporary file is named ``.<target name>.<pid>@<host>.tmp``. A write that fails (disk full,
read-only folder) or is interrupted removes its own temporary and leaves the target as it was;
`remove_orphans` deletes the temporaries of writers on this host that no longer run (SIGKILL).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

from diffbench.errors import StorageError, UsageError, check
from diffbench.interrupts import uninterrupted

HOST = socket.gethostname()
MIN_FREE_BYTES = 8 * 2**20  # room for a report: the default sweep's figures and pages take ~0.5 MB
_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[^@/]+)\.tmp$")


def temporary_path(target: Path) -> Path:
    """This process's temporary file for target (same folder, so the final rename is atomic)."""
    return target.with_name(f".{target.name}.{os.getpid()}@{HOST}.tmp")


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    """Yield a temporary path; when the block succeeds, fsync it and rename it over target, else remove it.

    An OSError (disk full, read-only, no permission) becomes a StorageError naming the target.
    """
    tmp = temporary_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except StorageError:
        raise  # from a nested staged block: it names its own target
    except OSError as e:
        raise StorageError(e.errno, e.strerror or str(e), str(target)) from e
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    """write(tmp) to a temporary file beside target, then rename it over target (see `staged`)."""
    with staged(target) as tmp:
        write(tmp)


def write_all(contents: Mapping[Path, bytes]) -> None:
    """Write every file to its temporary first, then rename them all: a failed write (disk full) changes none.

    SIGTERM / SIGINT wait until the renames are done, so a set of files (a report) never gets out of step.
    """
    with uninterrupted(), ExitStack() as stack:
        for target, data in contents.items():
            stack.enter_context(staged(target)).write_bytes(data)


def remove_orphans(folder: Path) -> None:
    """Delete the temporaries in folder whose writer, a process on this host, is gone (killed mid-write)."""
    for path in folder.glob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if match and match["host"] == HOST and not _running(int(match["pid"])):
            path.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_writable(folder: Path, field: str) -> None:
    """UsageError naming the config field unless folder exists or can be created and takes a new file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"{field}={folder}: cannot create or write this folder ({e.strerror or e}); "
                         f"choose a writable {field}=") from None


def check_output_folder(folder: Path, option: str, min_free: int = MIN_FREE_BYTES) -> None:
    """UsageError unless folder is (or can become) a writable folder with min_free bytes free; creates nothing."""
    check(not folder.exists() or folder.is_dir(), f"{option} {folder}: this is a file; give a folder")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    check(existing.is_dir(), f"{option} {folder}: {existing} is a file, so this folder cannot be created; give another")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UsageError(f"{option} {folder}: cannot write in {existing} ({e.strerror or e}); "
                         f"give a writable {option}") from None
    free = shutil.disk_usage(existing).free
    check(free >= min_free, f"{option} {folder}: only {free / 2**20:.1f} MB free on its device "
                            f"(need {min_free / 2**20:.0f} MB); free space or give another {option}")


def check_output_file(path: Path, field: str) -> None:
    """UsageError naming the option unless a file can later be written at path (checked before computing).

    The path must not be a folder; its nearest existing ancestor must be a folder that takes a new
    file (probed with a temporary file, so read-only mounts count even for root). Missing parent
    folders are created only when the file is written (``staged``), so a rejected run leaves nothing.
    """
    if path.is_dir():
        raise UsageError(f"{field} {path} is a folder; give a file path")
    folder = next(p for p in path.parents if p.exists())
    if not folder.is_dir():
        raise UsageError(f"{field} {path}: {folder} is a file, not a folder; give another path")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"{field} {path}: cannot write in {folder} ({e.strerror or e}); "
                         "choose a writable path") from None
