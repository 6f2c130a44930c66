"""Files: outputs are written whole or not at all (temporary file, then rename); JSON configs read with clear errors."""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CheckpointError


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


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new hidden file beside ``path``, created 0666 so the kernel applies the umask (as ``open`` does;
    ``tempfile.mkstemp`` makes 0600, and reading the umask means setting it, racing other threads)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
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
