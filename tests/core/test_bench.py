"""The benchmark command runs and reports every stage for both stacks (timings are not asserted)."""

from __future__ import annotations

import re

import torch

from bench.random_model import PRESETS, build_random_model
from bench.speed import main
from mgie_core.config import DeriveConfig
from mgie_core.stages.decode import greedy_generate
from mgie_core.stages.prompt import build_prompt


def test_answers_have_the_forced_length():
    model = build_random_model(PRESETS["tiny"], torch.device("cpu"), torch.float32)
    ids = torch.tensor([model.tokenizer.encode(build_prompt("make it red", model.spec))])
    assert (ids == model.spec.im_patch_token_id).sum() == 256  # ViT-L/14 at 224, as the real model
    with torch.no_grad():
        embeds = model.mllm.embed(ids, torch.zeros(1, 256, 256), model.spec.im_patch_token_id)
        [(seq, states)] = greedy_generate(model, ids, embeds, DeriveConfig(max_new_tokens=7))
    assert len(seq) - ids.shape[1] == 7 and len(states) == len(seq) - 1


def test_bench_prints_both_stacks(capsys, tmp_path):
    out = tmp_path / "RESULTS.md"
    assert main(["--preset", "tiny", "--batch", "1", "--steps", "2", "--answer-tokens", "2", "--size", "64", "--repeat", "1",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for stage in ("vision + prefill", "decode per token (batch)", "edit head", "denoise per step", "VAE encode", "VAE decode",
                  "end to end", "peak LLM", "peak diffusion"):
        assert f"| 1 | {stage} |" in text, stage
    assert re.search(r"\| 1 \| end to end \| [\d.]+ m?s \| [\d.]+ m?s \| [\d.]+x \|", text)
    assert out.read_text().strip() == text.strip()


def test_memory_bench_compares_each_mode_with_the_resident_baseline(capsys):
    from bench.memory import main as memory_main

    assert memory_main(["--preset", "tiny", "--device", "cpu", "--modes", "int8,staged,resident,int4", "--steps", "2",
                        "--answer-tokens", "2", "--size", "64"]) == 0
    captured = capsys.readouterr()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in captured.out.splitlines() if re.match(r"\| (resident|staged|int8) \|", line)}
    assert list(rows) == ["resident", "int8", "staged"]  # the baseline first, then in the order asked
    assert rows["resident"][6] == "reference" and rows["staged"][6] == "same"
    assert float(rows["staged"][7]) < 1e-5 and 0 < float(rows["int8"][7]) < 0.1  # visual tokens against fp32
    assert "int4: failed: InputError: the 4-bit LLM needs a CUDA GPU" in captured.err  # reported, not fatal
