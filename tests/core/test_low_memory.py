"""Small-GPU placements: the int8 LLM (CPU here), staging and the tiled VAE, against the full-precision edit."""

from __future__ import annotations

import pytest
import torch
from conftest import make_image

from mgie_core import EditSettings, InputError, MGIEPipeline, load_model
from mgie_core.config import PlacementSettings
from mgie_core.images import pil_to_tensor
from mgie_core.runtime.memory import memory_budget
from mgie_core.runtime.placement import PlacedModel, Placement, plan_memory
from mgie_core.runtime.quant import check_llm_quant, is_quantized, quantization_of, quantize_llm, storage_bytes
from mgie_core.stages.sample import TILE_ABOVE, use_vae_tiling

SETTINGS = EditSettings(max_new_tokens=40, num_inference_steps=4)
PROMPTS = ["make it look like winter", "add a red hat", "turn the sky green", "remove the square"]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture()
def int8_pipe(tiny_root):
    return MGIEPipeline(load_model(tiny_root), "cpu", "fp32", llm_quant="int8")


def test_int8_keeps_the_tokens_and_comes_close(tiny_model, int8_pipe):
    reference = MGIEPipeline(tiny_model, "cpu", "fp32")
    images = [make_image(seed=i) for i in range(len(PROMPTS))]
    for image, prompt in zip(images, PROMPTS):
        full, low = (p(image, prompt, SETTINGS, seed=3) for p in (reference, int8_pipe))
        assert [t.tolist() for t in low.derivation.token_ids] == [t.tolist() for t in full.derivation.token_ids], prompt
        tokens = relative_error(low.derivation.visual_tokens, full.derivation.visual_tokens)
        imagination = relative_error(low.imagination.imagination, full.imagination.imagination)
        pixels = (low.output.images - full.output.images).abs()
        print(f"{prompt!r}: visual tokens {tokens:.2e}, imagination {imagination:.2e}, "
              f"image mean {float(pixels.mean()) * 255:.3f}/255 max {float(pixels.max()) * 255:.2f}/255")
        assert 0 < tokens < 0.05 and 0 < imagination < 0.05  # quantized (not equal), yet close
        assert float(pixels.mean()) < 2 / 255


def test_only_the_decoder_linears_are_quantized(tiny_root, int8_pipe):
    before = load_model(tiny_root).to("cpu", torch.float32)
    mllm = int8_pipe.model.mllm
    assert quantization_of(mllm.llm) == "int8" and is_quantized(mllm.llm)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert type(getattr(mllm.llm.layers[0].self_attn, name).weight) is not torch.nn.Parameter
    untouched = {"lm_head": (before.mllm.lm_head, mllm.lm_head), "embed_tokens": (before.mllm.llm.embed_tokens,
                 mllm.llm.embed_tokens), "vision_tower": (before.mllm.vision_tower, mllm.vision_tower),
                 "mm_projector": (before.mllm.mm_projector, mllm.mm_projector),
                 "edit_head": (before.edit_head, int8_pipe.model.edit_head), "unet": (before.unet, int8_pipe.model.unet)}
    for name, (a, b) in untouched.items():
        assert not is_quantized(b), name
        for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), f"{name}.{key}"
    linears = sum(storage_bytes(layer.mlp) for layer in mllm.llm.layers)
    full = sum(storage_bytes(layer.mlp) for layer in before.mllm.llm.layers)
    assert linears < 0.3 * full  # int8 with per-channel scales, against fp32


def test_quantizing_twice_or_an_unknown_mode_is_refused(int8_pipe):
    with pytest.raises(InputError, match="already quantized"):
        quantize_llm(int8_pipe.model.mllm.llm, "int8", "cpu")
    with pytest.raises(InputError, match="not one of none, int8, int4"):
        check_llm_quant("int3", "cpu")


def test_compile_and_a_staged_placement_are_refused_together_before_anything_loads(tiny_model):
    for legacy in ("16 GB (fp16, staged)", "8 GB (int8 LLM, staged)"):
        with pytest.raises(InputError, match="compile does not go with a staged placement"):
            Placement.make(PlacementSettings(memory=legacy, compile=True), "cpu")
    with pytest.raises(InputError, match="compile does not go with a staged placement"):
        Placement(torch.device("cpu"), torch.float32, staged=True, compile=True)
    pending = Placement.make(PlacementSettings(memory="1", compile=True), "cpu")  # fits only staged, by its plan
    with pytest.raises(InputError, match="compile needs every part on the GPU"):
        pending.resolve(tiny_model)


def test_four_bit_on_a_cpu_says_what_works():
    with pytest.raises(InputError, match="4-bit LLM needs a CUDA GPU.*use int8"):
        Placement.make(PlacementSettings(llm_quant="int4"), "cpu")


def test_memory_is_a_card_size_and_old_workflows_labels_keep_their_placement():
    cpu = torch.device("cpu")
    assert PlacementSettings(memory="12 GB").memory == PlacementSettings(memory=12).memory == "12"
    assert Placement.make(PlacementSettings(memory="8 GB (int8 LLM, staged)"), cpu) == Placement(
        cpu, torch.float32, "int8", True)
    assert Placement.make(PlacementSettings(memory="24 GB (fp16, all on the GPU)"), cpu) == Placement(cpu, torch.float32)
    assert Placement.make(PlacementSettings(), cpu) == Placement(cpu, torch.float32)  # auto on a CPU: as loaded
    for bad in ("12.5", "0", "huge", "-8"):
        with pytest.raises(InputError, match="memory must be auto or your GPU's memory in GB, a whole number"):
            PlacementSettings(memory=bad)
    with pytest.raises(InputError, match="old workflow's fixed placement"):
        PlacementSettings(memory="6 GB (4-bit LLM, staged)", llm_quant="int8")


def test_a_staged_placement_moves_each_stage_in_and_the_others_out(tiny_model, monkeypatch):
    placed = {}
    names = {id(module): name for name, module in tiny_model.modules().items()}
    record = lambda module, device=None, dtype=None: placed.update({names[id(module)]: str(device)})  # noqa: E731
    monkeypatch.setattr("mgie_core.runtime.placement.move", record)
    monkeypatch.setattr("mgie_core.model.mgie.move", lambda module, device=None, dtype=None: module)
    cuda, fp32 = torch.device("cuda"), torch.float32
    staged = PlacedModel(tiny_model, Placement(cuda, fp32, staged=True))  # only recorded: no GPU is needed
    assert placed == {"edit_head": "cuda"}
    staged.place("derive")
    assert placed == {"edit_head": "cuda", "mllm": "cuda", "unet": "cpu", "vae": "cpu"}
    staged.place("sample")
    assert placed == {"edit_head": "cuda", "mllm": "cpu", "unet": "cuda", "vae": "cuda"}
    placed.clear()
    PlacedModel(tiny_model, Placement(cuda, fp32)).place("sample")
    assert placed == dict.fromkeys(("mllm", "edit_head", "unet", "vae"), "cuda")  # everything stays on the GPU
    placed.clear()
    assert not PlacedModel(tiny_model, Placement(torch.device("cpu"), fp32, staged=True)).staged  # nothing to stage


def test_a_staged_placement_gives_the_same_edit(tiny_model, tiny_root, image):
    full = MGIEPipeline(tiny_model, "cpu", "fp32")(image, "add a red hat", SETTINGS, seed=5)
    staged = Placement(torch.device("cpu"), torch.float32, staged=True)
    low = MGIEPipeline(load_model(tiny_root), placement=staged)(image, "add a red hat", SETTINGS, seed=5)
    assert torch.equal(full.output.images, low.output.images)


def test_tiled_vae_matches_untiled_without_seams(tiny_model):
    # The tiny VAE's tile is 32 px: a 64 px picture is 3x3 overlapping tiles, blended.
    pipe = MGIEPipeline(tiny_model, "cpu", "fp32")
    picture = pil_to_tensor([make_image(64, 64, seed=1)])
    derivation = pipe.derive([make_image(seed=1)], ["add a red hat"], SETTINGS)
    imagination = pipe.imagine(derivation)
    whole, tiled = (pipe.sample(picture, imagination, EditSettings(num_inference_steps=3, vae_tiling=mode), seed=2)
                    for mode in ("off", "on"))
    difference = (whole.images - tiled.images).abs()
    print(f"tiled vs whole VAE, 64 px on 32 px tiles: mean {float(difference.mean()) * 255:.2f}/255, "
          f"max {float(difference.max()) * 255:.1f}/255")
    assert not torch.equal(whole.images, tiled.images)  # the tiled path ran
    assert float(difference.mean()) < 0.1


def test_auto_tiling_starts_above_the_limit():
    assert not use_vae_tiling("auto", (TILE_ABOVE, TILE_ABOVE))
    assert use_vae_tiling("auto", (512, TILE_ABOVE + 8))
    assert use_vae_tiling("on", (64, 64)) and not use_vae_tiling("off", (4096, 4096))


@pytest.mark.parametrize("card_gb, plan", [(24, ("none", False)), (16, ("none", True)), (12, ("int8", True)),
                                           (8, ("int4", True)), (6, ("int4", True)), (4, ("int4", True))])
def test_memory_plan_for_mgie_7b_on_common_cards(card_gb, plan):
    from bench.random_model import PRESETS, build_random_model

    model = build_random_model(PRESETS["full"], torch.device("meta"), torch.float16)  # MGIE-7B's shapes, no memory
    cuda = torch.device("cuda")
    assert plan_memory(model, torch.float16, memory_budget(card_gb, cuda), cuda)[:2] == plan


def test_a_cpu_plans_for_the_card_it_is_given_without_4_bits(tiny_model):
    cpu = torch.device("cpu")
    assert plan_memory(tiny_model, torch.float32, memory_budget(2, cpu), cpu)[:2] == ("none", False)
    assert plan_memory(tiny_model, torch.float32, memory_budget(1, cpu), cpu)[:2] == ("int8", True)  # nothing fits
    assert plan_memory(tiny_model, torch.float32, None, cpu, llm_quant="int8")[:2] == ("int8", True)
