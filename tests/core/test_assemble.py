"""assemble: tiny pieces in their real formats -> a bundle that edits exactly as the Apple layout built from the
same pieces by LLaVA's own algorithm (tiny_pieces.py); and one clear line, no file, for every wrong piece."""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import make_image
from tiny_checkpoint import _save_sharded
from tiny_pieces import build_reference_layout, build_tiny_pieces, read_shards

from mgie_core import EditSettings, load_model
from mgie_core.assemble import writer
from mgie_core.formats.bundle import save_bundle
from mgie_core.frontends.cli import main
from mgie_core.frontends.pipeline import MGIEPipeline


@pytest.fixture(scope="module")
def pieces(tiny_root, tmp_path_factory):
    return build_tiny_pieces(tiny_root, tmp_path_factory.mktemp("pieces"))


@pytest.fixture(scope="module")
def reference_root(pieces, tmp_path_factory):
    return build_reference_layout(pieces, tmp_path_factory.mktemp("reference") / "MGIE")


@pytest.fixture(scope="module")
def reference(reference_root):
    return edit(load_model(reference_root))


def edit(model):
    pipe = MGIEPipeline(model, "cpu", torch.float32)
    return pipe(make_image(), "make the sky blue", EditSettings(max_new_tokens=40, num_inference_steps=3, seed=5))


def assert_same_edit(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a.derivation.token_ids, b.derivation.token_ids, strict=True))
    assert torch.equal(a.derivation.visual_tokens, b.derivation.visual_tokens)
    assert torch.equal(a.imagination.imagination, b.imagination.imagination)
    assert torch.equal(a.imagination.null_imagination, b.imagination.null_imagination)
    assert torch.equal(a.output.images, b.output.images)


def test_bundle_edits_exactly_as_the_apple_layout(pieces, reference_root, reference, tmp_path, capsys):
    out = tmp_path / "out" / "mgie-7b.safetensors"
    assert main(pieces.args(out)) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no scratch folder, no temporary file left
    bundle = load_model(out)
    assert bundle.info["format"] == "bundle"
    assert_same_weights(bundle, load_model(reference_root))  # same dtypes too; same fingerprint: LoRAs carry over
    result = edit(bundle)
    assert "[IMG0]" in bundle.tokenizer.decode(result.derivation.token_ids[0].tolist())  # the trained answer survived
    assert_same_edit(result, reference)


def test_fp16_bundle_is_byte_for_byte_what_convert_writes(pieces, reference_root, tmp_path, monkeypatch):
    converted = save_bundle(load_model(reference_root), tmp_path / "convert.safetensors", dtype="fp16")
    out = tmp_path / "assembled.safetensors"
    assert main([*pieces.args(out), "--dtype", "fp16"]) == 0
    assert out.read_bytes() == converted.read_bytes()
    # streamed in blocks of a few rows (a grown vocabulary split across blocks): the same bytes
    monkeypatch.setattr(writer, "BLOCK_BYTES", 200)
    small = tmp_path / "small-blocks.safetensors"
    assert main([*pieces.args(small), "--dtype", "fp16"]) == 0
    assert small.read_bytes() == converted.read_bytes()


def assert_same_weights(a, b):
    assert a.fingerprint() == b.fingerprint()
    for name, module in a.modules().items():
        theirs = b.modules()[name].state_dict()
        assert all(t.dtype == theirs[k].dtype and torch.equal(t, theirs[k]) for k, t in module.state_dict().items())


def test_merged_llava_and_unpacked_mgie_folder(pieces, reference_root, tmp_path):
    out = tmp_path / "b.safetensors"
    args = ["assemble", "--llava", str(reference_root / "LLaVA-7B-v1"), "--mgie", str(reference_root / "mgie_7b"),
            "--ip2p", str(pieces.ip2p), "--clip", str(pieces.clip), "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert_same_weights(load_model(out), load_model(reference_root))  # the weights the edit above compares


# -- wrong pieces: one line, exit 2, no file --------------------------------------------------------
def _copy(folder: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(folder, tmp_path / name))


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _retensor(folder: Path, key: str, tensor: torch.Tensor) -> None:
    state = read_shards(folder)
    state[key] = tensor
    for shard in folder.glob("pytorch_model*"):
        shard.unlink()
    _save_sharded(state, folder)


def _truncated(pieces, tmp_path, _, keep=0.5):
    data = pieces.mgie.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[:-4])
    return {"--mgie": tmp_path / "cut.tar.gz"}


def _foreign_tarball(pieces, tmp_path, _):
    with tarfile.open(tmp_path / "other.tar.gz", "w:gz") as archive:
        archive.add(pieces.clip, arcname="clip")
    return {"--mgie": tmp_path / "other.tar.gz"}


def _no_added_tokens(pieces, tmp_path, _):
    delta = _copy(pieces.llava_delta, tmp_path, "delta")
    (delta / "added_tokens.json").unlink()
    return {"--llava-delta": delta}


def _llama_config(pieces, tmp_path, **changes):
    llama = _copy(pieces.llama, tmp_path, "llama")
    _edit_json(llama / "config.json", **changes)
    return {"--llama": llama}


def _not_fitting(pieces, tmp_path, _):
    delta = _copy(pieces.llava_delta, tmp_path, "delta")
    _retensor(delta, "model.layers.0.mlp.up_proj.weight", torch.zeros(64, 128, dtype=torch.float16))  # transposed
    return {"--llava-delta": delta}


WRONG = {
    "base is the delta": (lambda p, t, r: {"--llama": p.llava_delta}, "is LLaVA .*not the plain LLaMA-7B"),
    "base is LLaVA": (lambda p, t, r: {"--llama": r / "LLaVA-7B-v1"}, "is LLaVA .*not the plain LLaMA-7B"),
    "base of another size": (lambda p, t, r: _llama_config(p, t, hidden_size=80, num_hidden_layers=3),
                             "another size than the model the delta was made on"),
    "LLaMA-2 as base": (lambda p, t, r: _llama_config(p, t, rms_norm_eps=1e-5), "LLaMA-2 uses 1e-05"),
    "delta does not fit": (_not_fitting, r"up_proj.weight is \[64, 128\] in the LLaVA delta .* the delta does not fit"),
    "delta is LLaMA": (lambda p, t, r: {"--llava-delta": p.llama}, "is not a LLaVA delta"),
    "truncated tarball": (_truncated, "is truncated or damaged"),
    "tarball cut in gzip's trailer": (lambda p, t, r: _truncated(p, t, r, keep=1), "is truncated or damaged"),
    "foreign tarball": (_foreign_tarball, "holds no mllm.pt or unet.pt: it is not Apple's mgie_7b.tar.gz"),
    "not a tarball": (lambda p, t, r: {"--mgie": p.llama / "config.json"}, "is not a tar.gz archive"),
    "missing folder": (lambda p, t, r: {"--clip": t / "nowhere"}, "--clip .*nowhere not found"),
    "tokenizer without LLaVA's tokens": (_no_added_tokens, "lacks LLaVA's added tokens <im_patch>, <im_start>, <im_end>"),
}


@pytest.mark.parametrize("case", WRONG)
def test_wrong_piece_is_refused_with_one_line_and_no_file(case, pieces, reference_root, tmp_path, capsys):
    make, message = WRONG[case]
    (tmp_path / "in").mkdir()
    args = pieces.args(tmp_path / "out" / "m.safetensors")
    for flag, value in make(pieces, tmp_path / "in", reference_root).items():
        args[args.index(flag) + 1] = str(value)
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_merged_llava_refused_where_a_delta_goes_and_vice_versa(pieces, tmp_path, capsys):
    args = pieces.args(tmp_path / "m.safetensors")
    args[args.index("--llama"):args.index("--llava-delta") + 2] = ["--llava", str(pieces.llama)]
    assert main(args) == 2
    assert "is not LLaVA" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_benchmarks_synthetic_pieces_assemble(tmp_path):
    """bench/assemble.py measures on random pieces in the real formats: they must be pieces assemble accepts."""
    from bench.assemble import PRESETS, build_pieces, command

    pieces = build_pieces(PRESETS["tiny"], tmp_path / "pieces")
    out = tmp_path / "b.safetensors"
    assert main(command(pieces, out)) == 0
    model = load_model(out)
    assert model.mllm.lm_head.weight.shape[0] == model.tokenizer.vocab_size
