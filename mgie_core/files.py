"""Files: outputs are written whole or not at all (temporary file, then rename); JSON configs read with clear errors."""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CheckpointError, InputError


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary handle; ``path`` appears (or is replaced) only if the block finishes, with the
    permissions a plain ``open`` would give it (a replaced file keeps its own), not a temporary file's 0600:
    a model or picture written here must stay readable to ComfyUI running as another user."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = stat.S_IMODE(path.stat().st_mode) if path.is_file() else None
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        if keep is not None:
            os.chmod(tmp, keep)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


TEMP_STEM = 64  # characters of the final name a temporary file keeps, so a long final name still fits
TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # what _create_temporary names


def remove_temporaries(folder: Path, name: str | None = None) -> int:
    """Remove the temporary files a killed run left in ``folder`` (only those of ``name``, when given); returns
    how many. Call it before a run writes, never while another run writes there."""
    if not folder.is_dir():
        return 0
    prefix = f".{name[:TEMP_STEM]}." if name else "."
    removed = 0
    for entry in folder.iterdir():
        if entry.is_file() and entry.name.startswith(prefix) and TEMPORARY.match(entry.name):
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def check_writable(path: Path, what: str, folder: bool = False, needed: int = 0) -> None:
    """Refuse, before any work, an output that cannot be written: a file name that is a folder (or the reverse),
    a read-only or missing place, a name the file system refuses, or less than ``needed`` bytes free."""
    path = Path(path)
    if "\0" in str(path):
        raise InputError(f"{what} {str(path)!r} holds a NUL character; give a plain name")
    place = path if folder else path.parent
    existing = next(p for p in (place, *place.parents) if p.exists())
    limit = os.pathconf(existing, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    for part in path.parts[len(existing.parts):]:  # names that do not exist yet, the output's among them
        if len(part.encode()) > limit:
            raise InputError(f"{what}: the name {part[:40]}... is {len(part.encode())} bytes long; this file system "
                             f"takes at most {limit}: choose a shorter name")
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file; it writes into a folder: give a folder name")
    if not folder and path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name, such as {path / 'edited.png'}")
    if not existing.is_dir():
        raise InputError(f"{what} {path}: cannot write in {existing} (not a writable folder); choose another place")
    missing = existing != place  # folders the output needs that do not exist yet: made in ``existing`` when it runs
    try:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "permission denied")
        _probe(existing, path)
    except OSError as err:
        reason = "the disk is full" if err.errno == errno.ENOSPC else err.strerror
        if missing:
            raise InputError(f"{what} {path}: the folder {place} does not exist, and it cannot be made in {existing} "
                             f"({reason}); create it, or choose another place") from None
        raise InputError(f"{what} {path}: cannot write in {existing} ({reason}); choose another place") from None
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise InputError(f"{what} {path}: only {free / 2**20:.1f} MiB free on that disk, and the output needs about "
                         f"{needed / 2**20:.1f} MiB; free some space or choose another place")


def _probe(folder: Path, path: Path) -> None:
    """Create and remove a temporary file in ``folder``: a read-only file system refuses it here, not after the edit."""
    fd, tmp = _create_temporary(folder / (path.name or "probe"))
    os.close(fd)
    tmp.unlink(missing_ok=True)


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new hidden file beside ``path``, created 0666 so the kernel applies the umask (as ``open`` does;
    ``tempfile.mkstemp`` makes 0600, and reading the umask means setting it, racing other threads)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f".{path.name[:TEMP_STEM]}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def read_json(path: Path, default: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON object from a model file; ``default`` when the file is absent (an error if no default)."""
    if not path.is_file():
        if default is None:
            raise CheckpointError(f"missing file: {path}")
        return default
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); restore the file") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data
