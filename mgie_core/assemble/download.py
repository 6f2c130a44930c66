"""``--download``: pieces given as Hugging Face repo ids are fetched into the Hugging Face cache, Apple's
tarball into ``$MGIE_CACHE`` (default ``~/.cache/mgie``). Both resume an interrupted download. Nothing is
ever fetched without ``--download``.

Only the files assembling reads are fetched (configs, tokenizer, one format of the weights, safetensors
preferred): InstructPix2Pix's own UNet, text encoder and safety checker, and CLIP's TensorFlow and Flax
copies stay on the hub. ``HF_ENDPOINT`` selects the hub, ``MGIE_TARBALL_URL`` the tarball's address.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import CheckpointError, InputError
from .progress import byte_bar

logger = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # huggingface_hub's client logs every request at INFO

APPLE_TARBALL_URL = "https://docs-assets.developer.apple.com/ml-research/models/mgie/mgie_7b.tar.gz"
APPLE = "apple"
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
TOKENIZER = ["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"]
# piece -> (files always wanted, (folder, weight stems) whose weights are wanted)
HUB_FILES: dict[str, tuple[list[str], tuple[str, tuple[str, ...]]]] = {
    "llama": (["config.json", *TOKENIZER], ("", ("model", "pytorch_model"))),
    "llava_delta": (["config.json", *TOKENIZER], ("", ("model", "pytorch_model"))),
    "llava": (["config.json", *TOKENIZER], ("", ("model", "pytorch_model"))),
    "clip": (["config.json", "preprocessor_config.json"], ("", ("model", "pytorch_model"))),
    "ip2p": (["model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "vae/config.json"],
             ("vae/", ("diffusion_pytorch_model",))),
}
FLAGS = {"llama": "--llama", "llava_delta": "--llava-delta", "llava": "--llava", "clip": "--clip", "ip2p": "--ip2p"}


def cache_dir() -> Path:
    return Path(os.environ.get("MGIE_CACHE") or Path.home() / ".cache" / "mgie").expanduser()


def resolve_pieces(given: dict[str, str | None], download: bool, progress: bool = True) -> dict[str, Path | None]:
    """Local paths for every piece: as given, or fetched (``--download``) when given as a repo id / ``apple``."""
    mgie = given["mgie"]
    if mgie == APPLE and not download and not Path(mgie).exists():
        raise InputError("--mgie apple fetches Apple's tarball: add --download, or give the path of mgie_7b.tar.gz")
    for piece, flag in {**FLAGS, "mgie": "--mgie"}.items():  # a missing local piece first, before gigabytes download
        value = given.get(piece)
        if value is not None and not _fetched(value, piece, download) and not Path(value).expanduser().exists():
            raise InputError(f"{flag} {value} not found; give the downloaded piece, or a Hugging Face repo id with "
                             "--download (README, 'Getting the weights')")
    resolved: dict[str, Path | None] = {}
    for piece, flag in FLAGS.items():
        value = given.get(piece)
        fetch = value is not None and _fetched(value, piece, download)
        resolved[piece] = fetch_repo(value, piece, flag) if fetch else None if value is None else Path(value).expanduser()
    url = os.environ.get("MGIE_TARBALL_URL") or APPLE_TARBALL_URL
    resolved["mgie"] = (fetch_url(url, cache_dir() / "mgie_7b.tar.gz", progress) if _fetched(mgie, "mgie", download)
                        else Path(mgie).expanduser())
    return resolved


def _fetched(value: str, piece: str, download: bool) -> bool:
    """Whether a piece is to be downloaded: ``--download`` and a repo id (``apple`` for --mgie), not a local path."""
    wanted = value == APPLE if piece == "mgie" else bool(REPO_ID.fullmatch(value))
    return download and wanted and not Path(value).expanduser().exists()


def fetch_repo(repo_id: str, piece: str, flag: str) -> Path:
    """Download the files of ``repo_id`` that the piece needs into the Hugging Face cache; its snapshot folder."""
    from huggingface_hub import HfApi, constants, snapshot_download

    if constants.HF_HUB_OFFLINE:
        raise InputError(f"{flag} {repo_id}: --download was given but HF_HUB_OFFLINE is set; unset it to download")
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        files = set(HfApi(endpoint=endpoint).list_repo_files(repo_id))
        wanted = hub_files(files, piece, repo_id)
        logger.info("downloading %s (%d files) into the Hugging Face cache", repo_id, len(wanted))
        return Path(snapshot_download(repo_id, allow_patterns=wanted, endpoint=endpoint))
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - the hub raises many types (HTTP, gated, not found, network)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{flag} {repo_id}: download failed ({reason}); check the repo id, your network, and "
                              "for a gated repo your access (hf auth login); run again to resume") from None


def hub_files(files: set[str], piece: str, repo_id: str) -> list[str]:
    """The files of a repo listing that ``piece`` needs: its configs and tokenizer, and one copy of the weights."""
    always, (folder, stems) = HUB_FILES[piece]
    for stem in stems:
        for ext in ("safetensors", "bin"):
            index = f"{folder}{stem}.{ext}.index.json"
            if index in files:
                shard = re.compile(rf"{re.escape(folder + stem)}-\d+-of-\d+\.{ext}")
                weights = [index, *sorted(f for f in files if shard.fullmatch(f))]
                return [f for f in always if f in files] + weights
            if f"{folder}{stem}.{ext}" in files:
                return [f for f in always if f in files] + [f"{folder}{stem}.{ext}"]
    raise CheckpointError(f"{FLAGS[piece]} {repo_id}: the repo has no weights under {folder or 'its top folder'} "
                          f"({', '.join(stems)} .safetensors or .bin); is it the right repo?")


def fetch_url(url: str, target: Path, progress: bool = True) -> Path:
    """Download ``url`` to ``target``, resuming a ``.part`` file left by an interrupted run (HTTP Range)."""
    if target.is_file():
        logger.info("using %s (already downloaded)", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            have, total = _resume_point(response, have, url)
            with open(part, "ab" if have else "wb") as out, \
                    byte_bar(total, f"downloading {target.name}", progress, initial=have) as bar:
                while block := response.read(2**20):
                    out.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as err:
        if err.code != 416:
            raise CheckpointError(f"downloading {url} failed (HTTP {err.code} {err.reason})") from None
        total = _size(url)  # 416: nothing left after the part; whole if the sizes agree
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        got = part.stat().st_size if part.is_file() else 0
        raise CheckpointError(f"downloading {url} stopped after {got / 1e6:.0f} MB ({err}); run the same command "
                              "again to resume") from None
    size = part.stat().st_size
    if total >= 0 and size != total:
        if size > total:  # not a part of this file: start afresh next time
            part.unlink()
        raise CheckpointError(f"downloading {url} stopped early ({size} of {total} bytes); run the same command "
                              "again to resume")
    os.replace(part, target)
    return target


def _size(url: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60) as response:
            return int(response.headers.get("Content-Length") or -1)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise CheckpointError(f"downloading {url} failed ({err}); run the same command again") from None


def _resume_point(response, have: int, url: str) -> tuple[int, int]:
    """Where the body starts and the file's full size: a 206 continues the part file, a 200 starts afresh."""
    length = int(response.headers.get("Content-Length") or -1)
    if have and response.status == 206:
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != have:
            raise CheckpointError(f"{url}: the server resumed at another byte than asked; delete the .part file in "
                                  f"{cache_dir()} and run again")
        return have, int(match.group(2))
    return 0, length
