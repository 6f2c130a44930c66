"""--download against a local server that speaks the Hugging Face Hub's protocol (HF_ENDPOINT) and serves the tiny
pieces; Apple's tarball and ml-mgie's example picture from the same server (MGIE_TARBALL_URL, MGIE_EXAMPLE_URL).
Nothing here reaches the real hub or the internet."""

from __future__ import annotations

import shutil

import pytest
from conftest import make_image
from hub_server import HubServer
from tiny_pieces import build_tiny_pieces

from mgie_core.frontends.cli import main

REPOS = {"llama": "meta/llama-7b", "llava_delta": "llava/delta", "ip2p": "tim/ip2p", "clip": "openai/clip"}


@pytest.fixture()
def hub(tiny_root, tmp_path, monkeypatch):
    from huggingface_hub import constants

    pieces = build_tiny_pieces(tiny_root, tmp_path / "pieces")
    ip2p = shutil.copytree(pieces.ip2p, tmp_path / "served-ip2p")  # with the files assembling must not fetch
    for unwanted in ("unet/diffusion_pytorch_model.bin", "text_encoder/model.safetensors"):
        (ip2p / unwanted).parent.mkdir(exist_ok=True)
        (ip2p / unwanted).write_bytes(b"never fetched")
    make_image(seed=3).save(tmp_path / "3.jpg", format="JPEG")
    folders = {"llama": pieces.llama, "llava_delta": pieces.llava_delta, "ip2p": ip2p, "clip": pieces.clip}
    server = HubServer({REPOS[k]: v for k, v in folders.items()},
                       {"/apple/mgie_7b.tar.gz": pieces.mgie, "/apple/3.jpg": tmp_path / "3.jpg"})
    with server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("MGIE_TARBALL_URL", server.url + "/apple/mgie_7b.tar.gz")
        monkeypatch.setenv("MGIE_EXAMPLE_URL", server.url + "/apple/3.jpg")
        monkeypatch.setenv("MGIE_CACHE", str(tmp_path / "mgie-cache"))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield server, pieces, tmp_path


def download_args(out) -> list[str]:
    return ["assemble", "--llama", REPOS["llama"], "--llava-delta", REPOS["llava_delta"], "--mgie", "apple", "--ip2p",
            REPOS["ip2p"], "--clip", REPOS["clip"], "--out", str(out), "--quiet"]


def test_download_resumes_and_gives_the_same_bundle(hub):
    server, pieces, tmp_path = hub
    local = tmp_path / "local.safetensors"
    assert main(pieces.args(local)) == 0
    # an interrupted download of Apple's tarball left half of it
    tarball = pieces.mgie.read_bytes()
    (tmp_path / "mgie-cache").mkdir()
    (tmp_path / "mgie-cache" / "mgie_7b.tar.gz.part").write_bytes(tarball[: len(tarball) // 2])

    out = tmp_path / "downloaded.safetensors"
    assert main([*download_args(out), "--download"]) == 0
    assert out.read_bytes() == local.read_bytes()
    assert ("GET", "/apple/mgie_7b.tar.gz", f"bytes={len(tarball) // 2}-") in server.requests  # resumed, not restarted
    assert (tmp_path / "mgie-cache" / "mgie_7b.tar.gz").read_bytes() == tarball
    fetched = server.fetched()
    assert any(path.endswith("/vae/diffusion_pytorch_model.bin") for path in fetched)
    assert not any(path.endswith(("unet/diffusion_pytorch_model.bin", "text_encoder/model.safetensors"))
                   for path in fetched)  # only what assembling reads
    assert list((tmp_path / "hf-cache").glob("models--meta--llama-7b/snapshots/*/model.safetensors.index.json"))

    # a second run finds everything cached: Apple's tarball is not fetched again
    server.requests.clear()
    again = tmp_path / "again.safetensors"
    assert main([*download_args(again), "--download"]) == 0
    assert again.read_bytes() == local.read_bytes()
    assert "/apple/mgie_7b.tar.gz" not in server.fetched()


def test_a_whole_part_file_is_finished_without_fetching_it_again(hub):
    from mgie_core.assemble.download import fetch_url

    server, pieces, tmp_path = hub
    part = tmp_path / "cache" / "mgie_7b.tar.gz.part"
    part.parent.mkdir()
    part.write_bytes(pieces.mgie.read_bytes())  # the run was killed between the last byte and the rename
    target = fetch_url(server.url + "/apple/mgie_7b.tar.gz", tmp_path / "cache" / "mgie_7b.tar.gz", progress=False)
    assert target.read_bytes() == pieces.mgie.read_bytes() and not part.exists()
    assert server.requests[0] == ("GET", "/apple/mgie_7b.tar.gz", f"bytes={len(pieces.mgie.read_bytes())}-")  # 416


def test_nothing_is_downloaded_without_the_flag(hub, capsys):
    server, _, tmp_path = hub
    assert main(download_args(tmp_path / "m.safetensors")) == 2
    assert "error: --mgie apple fetches Apple's tarball: add --download" in capsys.readouterr().err
    args = download_args(tmp_path / "m.safetensors")
    args[args.index("apple")] = str(tmp_path / "pieces" / "mgie_7b.tar.gz")
    assert main(args) == 2
    assert f"error: --llama {REPOS['llama']} not found; give the downloaded piece, or a Hugging Face repo id with " \
           "--download" in capsys.readouterr().err
    assert server.requests == [] and not (tmp_path / "m.safetensors").exists()


def test_check_fetches_apples_example(hub, tiny_root, capsys):
    server, _, tmp_path = hub
    assert main(["check", "--model", str(tiny_root), "--download", "--device", "cpu", "--quiet"]) == 1  # not MGIE-7B
    assert "\ndifferent (word similarity" in capsys.readouterr().out
    assert server.fetched() == ["/apple/3.jpg"]
    assert (tmp_path / "mgie-cache" / "ml-mgie" / "_input" / "3.jpg").is_file()
