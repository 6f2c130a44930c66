"""Apple's ``mgie_7b.tar.gz`` as downloaded, or a folder holding ``mllm.pt`` and ``unet.pt``.

The tarball is read once, front to back, with :mod:`tarfile` (gzip cannot seek). ``torch.load`` needs a
seekable file, so each wanted member is copied, in 1 MiB blocks, into a temporary folder beside the output
and memory-mapped from there: the memory it takes stays a few MiB, whatever the member's size (the disk
takes the ~2.3 GB of the two members until the bundle is written). The folder is removed afterwards, also
when the run fails.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import CheckpointError
from .progress import byte_bar

MEMBERS = ("mllm.pt", "unet.pt")
BLOCK = 2**20
GZIP_MAGIC = b"\x1f\x8b"
WHAT = "Apple's mgie_7b.tar.gz (mgie_7b/mllm.pt and mgie_7b/unet.pt)"


def find_member_files(folder: Path) -> dict[str, Path]:
    """``mllm.pt`` and ``unet.pt`` of an unpacked ``mgie_7b`` folder (or of the folder above it)."""
    for candidate in (folder, folder / "mgie_7b"):
        files = {name: candidate / name for name in MEMBERS}
        if all(p.is_file() for p in files.values()):
            return files
    missing = [name for name in MEMBERS if not (folder / name).is_file()]
    raise CheckpointError(f"--mgie {folder} lacks {' and '.join(missing)}: give {WHAT} or the folder it unpacks to")


def check_tarball(path: Path) -> None:
    """Refuse, before reading it through, a file that is no (gzip) tar archive."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head[:2] != GZIP_MAGIC and head[257:262] != b"ustar":
        raise CheckpointError(f"--mgie {path} is not a tar.gz archive: give {WHAT} as downloaded, or the "
                              "folder it unpacks to")


@contextmanager
def mgie_files(path: Path, scratch_parent: Path, progress: bool = True) -> Iterator[dict[str, Path]]:
    """``{"mllm.pt": Path, "unet.pt": Path}`` for a folder or the tarball (extracted into scratch space)."""
    if not path.exists():
        raise CheckpointError(f"--mgie {path} not found: give {WHAT} or the folder it unpacks to")
    if path.is_dir():
        yield find_member_files(path)
        return
    check_tarball(path)
    scratch = Path(tempfile.mkdtemp(prefix=".mgie-assemble-", dir=scratch_parent))
    try:
        yield extract_members(path, scratch, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def extract_members(path: Path, scratch: Path, progress: bool) -> dict[str, Path]:
    """Stream the tarball once, to its end (so that a cut anywhere, even in gzip's checksum trailer, is caught);
    copy ``mllm.pt`` and ``unet.pt`` (wherever they are in it) into ``scratch``."""
    found: dict[str, Path] = {}
    with open(path, "rb") as raw, byte_bar(path.stat().st_size, f"reading {path.name}", progress) as bar:
        gzipped = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        counted = _Counted(raw, bar)
        try:
            stream = gzip.GzipFile(fileobj=counted, mode="rb") if gzipped else counted
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                for member in archive:
                    name = Path(member.name).name
                    if member.isfile() and name in MEMBERS and name not in found:
                        _check_room(scratch, member.size, path)
                        found[name] = _copy(archive.extractfile(member), scratch / name)
            while stream.read(BLOCK):  # the rest, through gzip's length and CRC check
                pass
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as err:
            raise CheckpointError(f"--mgie {path} is truncated or damaged ({err}); download it again (with "
                                  "--download, an interrupted download resumes)") from None
    missing = [name for name in MEMBERS if name not in found]
    if missing:
        raise CheckpointError(f"--mgie {path} holds no {' or '.join(missing)}: it is not {WHAT}")
    return found


def _copy(source: BinaryIO | None, target: Path) -> Path:
    if source is None:
        raise tarfile.ReadError(f"cannot read {target.name}")
    with open(target, "wb") as out:
        shutil.copyfileobj(source, out, BLOCK)
    return target


def _check_room(folder: Path, size: int, tarball: Path) -> None:
    free = shutil.disk_usage(folder).free
    if free < size:
        raise CheckpointError(f"unpacking {tarball.name} needs {size / 1e9:.1f} GB in {folder.parent}, which has "
                              f"{free / 1e9:.1f} GB free: make room or write --out elsewhere")


class _Counted:
    """A read-only file that reports the bytes read to a progress bar."""

    def __init__(self, raw: BinaryIO, bar):
        self.raw, self.bar = raw, bar

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.bar.update(len(data))
        return data
