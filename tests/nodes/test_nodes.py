"""The ComfyUI nodes, loaded the way ComfyUI loads the pack, on stubbed ComfyUI modules.

The pack imports its own copy of mgie_core (as ``ComfyUI-MGIE.mgie_core``), so its InputError is
matched here through the base class it shares with every input error, ValueError.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys

import comfy_harness as harness
import pytest
import torch
from conftest import make_image

from mgie_core import EditSettings, MGIEPipeline, SampleConfig, load_model
from mgie_core.images import pil_to_tensor

IDS = {
    "MGIELoader": "Load MGIE",
    "MGIEDeriveInstruction": "Derive Expressive Instruction",
    "MGIEVisualImagination": "Visual Imagination",
    "MGIESampler": "MGIE Sampler",
    "MGIEEdit": "MGIE Edit",
    "MGIETrainingPairs": "MGIE Training Pairs",
    "MGIETrainLoRA": "Train MGIE LoRA",
    "MGIESaveLoRA": "Save MGIE LoRA",
}


def comfy_image(*sizes, seed=0):
    return torch.cat([pil_to_tensor(make_image(w, h, seed=seed + i)).permute(0, 2, 3, 1) for i, (w, h) in enumerate(sizes)])


def load_outputs(nodes, name="tiny", dtype="fp32", memory="auto"):
    """Load MGIE's three outputs: the MGIE model, ComfyUI's MODEL and VAE."""
    return nodes["MGIELoader"].execute(model=name, dtype=dtype, memory=memory).values


def load(nodes, name="tiny", dtype="fp32", memory="auto"):
    return load_outputs(nodes, name, dtype, memory)[0]


def test_pack_imports_without_comfyui(tmp_path):
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('ComfyUI-MGIE', {str(harness.ROOT / '__init__.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['ComfyUI-MGIE'] = m; spec.loader.exec_module(m)\n"
        "assert callable(m.comfy_entrypoint)\n"
        "assert not [k for k in sys.modules if k.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths')]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


QUIET_START = """
import asyncio, importlib.util, logging, os, sys
logging.basicConfig(level=logging.INFO)  # as ComfyUI starts: every INFO record and above is printed
sys.path.insert(0, {stub!r}); os.environ["COMFY_STUB_BASE"] = {base!r}
spec = importlib.util.spec_from_file_location("ComfyUI-MGIE", {init!r})
module = importlib.util.module_from_spec(spec); sys.modules["ComfyUI-MGIE"] = module; spec.loader.exec_module(module)
nodes = asyncio.run(asyncio.run(module.comfy_entrypoint()).get_node_list())
print(len([node.define_schema() for node in nodes]), "torchao" in sys.modules)
"""


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed")
def test_comfyui_starts_the_pack_without_a_line_from_optional_parts(tmp_path):
    """diffusers imports torchao whenever it is installed; ComfyUI printed its 'Detected no triton' at start."""
    code = QUIET_START.format(stub=str(harness.STUB), base=str(tmp_path), init=str(harness.ROOT / "__init__.py"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["8", "True"]  # the nodes are listed, and torchao was imported on the way
    assert done.stderr == ""


def test_schemas(comfy):
    nodes = comfy[0]
    assert set(nodes) == set(IDS)
    defaults = SampleConfig()
    for node_id, cls in nodes.items():
        schema = cls.define_schema()
        schema.validate()
        assert schema.display_name == IDS[node_id] and schema.category == "MGIE" and schema.description
        assert all(w.tooltip for w in schema.widget_order()), node_id
    sampler = {i.id: i for i in nodes["MGIESampler"].define_schema().inputs}
    assert sampler["seed"].default == 13331 and sampler["seed"].extra["control_after_generate"]
    # 0 / auto: the preset's steps and scheduler, and what the loaded model recommends (the paper's for Apple's MGIE)
    assert sampler["steps"].default == sampler["guidance_scale"].default == sampler["image_guidance_scale"].default \
        == sampler["max_side"].default == 0 and sampler["preset"].default == "paper"
    assert sampler["scheduler"].default == "auto" and "dpmpp_2m" in sampler["scheduler"].extra["options"]
    assert sampler["guidance_scale"].display_name == "guidance_scale (0 = auto)"  # what 0 means, on the node
    assert sampler["max_side"].display_name == "max_side (0 = auto, -1 = no limit)" and sampler["max_side"].extra["min"] == -1
    assert defaults == SampleConfig()  # the paper's values resolve from those defaults
    from mgie_core import EditSettings

    assert EditSettings().sample_config() == defaults
    assert [o.io_type for o in nodes["MGIESampler"].define_schema().outputs] == ["IMAGE", "LATENT"]
    assert [o.io_type for o in nodes["MGIEVisualImagination"].define_schema().outputs] == ["CONDITIONING"] * 2
    derive = nodes["MGIEDeriveInstruction"].define_schema()
    assert [o.io_type for o in derive.outputs] == ["MGIE_DERIVATION", "STRING"]
    instruction = next(i for i in derive.inputs if i.id == "instruction")
    assert instruction.extra["multiline"] and next(i for i in derive.inputs if i.id == "expressive_override").optional


def test_loader_lists_models(comfy, tiny_root):
    nodes, _, _, folder_paths, tmp_path = comfy
    from mgie_core.formats.bundle import save_bundle

    save_bundle(load_model(tiny_root), tmp_path / "extra" / "tiny-bundle.safetensors")
    options = next(i for i in nodes["MGIELoader"].define_schema().inputs if i.id == "model").extra["options"]
    assert "tiny" in options and "tiny-bundle.safetensors" in options
    assert str(tmp_path / "models" / "mgie") in folder_paths.get_folder_paths("mgie")
    handle = load(nodes, "tiny-bundle.safetensors", dtype="fp16")
    assert handle.model.unet.dtype == torch.float16


def test_loader_errors(comfy):
    nodes = comfy[0]
    with pytest.raises(Exception, match=r"MGIE model 'gone' not found; looked in .*models/mgie"):
        load(nodes, "gone")
    with pytest.raises(ValueError, match="no MGIE model found .*python -m mgie_core assemble"):
        load(nodes, "(no MGIE model found in models/mgie)")
    with pytest.raises(ValueError, match="dtype must be one of"):
        load(nodes, dtype="fp8")


def test_every_node_on_the_tiny_checkpoint(comfy, tiny_root):
    nodes, mm, utils, _, _ = comfy
    handle = load(nodes)
    image = comfy_image((40, 32))
    out = nodes["MGIEDeriveInstruction"].execute(mgie_model=handle, image=image, instruction="make the sky blue",
                                                 max_new_tokens=40)
    link, text = out.values
    assert text == "paint the whole sky a deep blue.keep the rest as it is." and out.ui["text"] == (text,)
    assert utils.updates[-1] == (40, 40)
    positive, negative = nodes["MGIEVisualImagination"].execute(derivation=link).values
    assert positive[0][0].shape == (1, 77, 32) and negative[0][0].shape == (1, 77, 32) and positive[0][1] == {}
    images, latent = nodes["MGIESampler"].execute(
        mgie_model=handle, image=image, positive=positive, negative=negative, seed=5, steps=4, guidance_scale=7.5,
        image_guidance_scale=1.5, scheduler="euler_ancestral", max_side=1024).values
    assert images.shape == (1, 32, 40, 3) and images.device.type == "cpu" and 0 <= images.min() <= images.max() <= 1
    assert latent["samples"].shape == (1, 4, 16, 20)
    # the nodes are thin: the same numbers as the library's pipeline
    pipe = MGIEPipeline(load_model(tiny_root), "cpu", "fp32")
    ref = pipe(image.permute(0, 3, 1, 2), "make the sky blue", EditSettings(max_new_tokens=40, num_inference_steps=4),
               seed=5)
    torch.testing.assert_close(images, ref.output.images.permute(0, 2, 3, 1))


def test_edit_node_batch_and_override(comfy):
    nodes, _, utils, _, _ = comfy
    handle = load(nodes)
    batch = comfy_image((32, 32), (32, 32), (32, 32))
    args = dict(mgie_model=handle, image=batch, instruction="make it red", seed=1, steps=3, guidance_scale=7.5,
                image_guidance_scale=1.5, scheduler="ddim", max_side=1024)
    images, text = nodes["MGIEEdit"].execute(**args).values
    assert images.shape == (3, 32, 32, 3) and text == "turn the apple red."
    assert utils.updates[-1] == (3 * 96 + 3, 3 * 96 + 3)  # one bar over derivation and denoising
    images2, text2 = nodes["MGIEEdit"].execute(**args, expressive_override="paint the whole sky a deep blue.").values
    assert text2 == "paint the whole sky a deep blue." and not torch.allclose(images, images2)


def test_staged_memory_unloads_the_llm_before_denoising(comfy):
    nodes, mm, _, _, _ = comfy
    handle = load(nodes, memory="16 GB (fp16, staged)")
    nodes["MGIEEdit"].execute(mgie_model=handle, image=comfy_image((16, 16)), instruction="make it red", seed=0,
                              steps=2, guidance_scale=7.5, image_guidance_scale=1.5, scheduler="euler", max_side=0)
    mllm, diffusion = handle.patchers["derive"], handle.patchers["sample"]
    order = [(kind, p) for kind, p in mm.events if p in (mllm, diffusion)]
    assert order.index(("unload", mllm)) < order.index(("load", diffusion))
    assert not any(loaded.model is mllm for loaded in mm.current_loaded_models)


def test_int8_memory_mode_edits_like_full_precision(comfy):
    nodes = comfy[0]
    args = dict(image=comfy_image((32, 32)), instruction="make it red", seed=1, steps=3, guidance_scale=7.5,
                image_guidance_scale=1.5, scheduler="euler", max_side=1024)
    full, full_text = nodes["MGIEEdit"].execute(mgie_model=load(nodes), **args).values
    handle = load(nodes, memory="8 GB (int8 LLM, staged)")
    assert handle.placement.llm_quant == "int8" and handle.placement.staged
    assert 0 < handle.patchers["derive"].size < sum(p.numel() * 4 for p in handle.model.mllm.parameters())  # sized as stored
    low, low_text = nodes["MGIEEdit"].execute(mgie_model=handle, **args).values
    assert low_text == full_text and not torch.equal(low, full)
    assert float((low - full).abs().mean()) < 2 / 255


def test_compile_wants_every_part_resident(comfy):
    nodes = comfy[0]
    with pytest.raises(ValueError, match="compile does not go with a staged placement"):
        nodes["MGIELoader"].execute(model="tiny", dtype="fp32", memory="16 GB (fp16, staged)", compile=True)
    handle = nodes["MGIELoader"].execute(model="tiny", dtype="fp32", memory="auto", compile=True).values[0]
    assert handle.compiled and handle.compiled_unet is None  # compiled when MGIE Sampler first runs, not before


def test_four_bit_memory_mode_on_a_cpu_says_what_works(comfy):
    with pytest.raises(ValueError, match="4-bit LLM needs a CUDA GPU.*use int8"):
        load(comfy[0], memory="6 GB (4-bit LLM, staged)")


def test_cancel_stops_within_a_step_and_the_next_run_is_normal(comfy):
    nodes, mm, utils, _, _ = comfy
    handle = load(nodes)
    calls = []
    original = handle.model.unet.forward

    def unet(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            mm.interrupt_current_processing()  # the user presses Cancel during step 3
        return original(*args, **kwargs)

    handle.model.unet.forward = unet
    args = dict(mgie_model=handle, image=comfy_image((16, 16)), instruction="make it red", seed=0, steps=20,
                guidance_scale=7.5, image_guidance_scale=1.5, scheduler="euler_ancestral", max_side=1024)
    with pytest.raises(mm.InterruptProcessingException):
        nodes["MGIEEdit"].execute(**args)
    assert len(calls) == 3  # stopped right after the step that saw the request
    images, _ = nodes["MGIEEdit"].execute(**args).values  # the flag was cleared; the next prompt runs
    assert images.shape == (1, 16, 16, 3) and len(calls) == 23


def test_errors_a_user_can_act_on(comfy):
    nodes = comfy[0]
    handle = load(nodes)
    image = comfy_image((16, 16))
    with pytest.raises(ValueError, match="instruction is empty"):
        nodes["MGIEDeriveInstruction"].execute(mgie_model=handle, image=image, instruction="  ")
    with pytest.raises(ValueError, match="scheduler must be one of auto, euler_ancestral, .*got 'bogus'"):
        nodes["MGIESampler"].execute(mgie_model=handle, image=image, positive=[[torch.zeros(1, 77, 32), {}]],
                                     negative=[[torch.zeros(1, 77, 32), {}]], seed=0, steps=2, guidance_scale=7.5,
                                     image_guidance_scale=1.5, scheduler="bogus", max_side=0)
    with pytest.raises(ValueError, match="positive conditioning is empty"):
        nodes["MGIESampler"].execute(mgie_model=handle, image=image, positive=[], negative=[], seed=0, steps=2,
                                     guidance_scale=7.5, image_guidance_scale=1.5, scheduler="euler", max_side=0)
    with pytest.raises(ValueError, match="too small"):
        nodes["MGIEEdit"].execute(mgie_model=handle, image=comfy_image((1, 1)), instruction="x", seed=0, steps=2,
                                  guidance_scale=7.5, image_guidance_scale=1.5, scheduler="euler", max_side=0)


def test_sampling_widgets_at_zero_take_what_the_model_recommends(comfy):
    nodes = comfy[0]
    handle = load(nodes)
    cond = [[torch.randn(1, 77, 32), {}]]
    args = dict(mgie_model=handle, image=comfy_image((40, 32)), positive=cond, negative=cond, seed=0, steps=2,
                scheduler="euler", guidance_scale=0, image_guidance_scale=0, max_side=0)
    out = nodes["MGIESampler"].execute(**args)  # Apple's layout recommends nothing: the paper's values
    assert out.ui["text"] == ("euler, 2 steps; guidance 7.5 (text) / 1.5 (image), images up to 1024 px.",)
    handle.model.info["sampling"] = {"guidance_scale": 2.0, "image_guidance_scale": 1.2, "max_side": 16}
    out = nodes["MGIESampler"].execute(**args)  # as a bundle that recommends settings (mgie-mini: 2 / 1.5, 64 px)
    assert out.ui["text"] == ("euler, 2 steps; guidance 2 (text) / 1.2 (image), images up to 16 px.\nEdited at 16x12 "
                              "(the input is 40x32; max_side 16): upscale the result, or raise max_side, for the "
                              "input's size.",)  # said on the node: a small result is no surprise
    same = nodes["MGIESampler"].execute(**args | dict(guidance_scale=2.0, image_guidance_scale=1.2, max_side=16))
    assert out.values[0].shape == (1, 12, 16, 3) and torch.equal(out.values[0], same.values[0])
    chosen = nodes["MGIESampler"].execute(**args | dict(guidance_scale=3.0, max_side=1024))  # a set widget wins
    assert chosen.ui["text"] == ("euler, 2 steps; guidance 3 (text) / 1.2 (image), images up to 1024 px.",)
    fast = nodes["MGIESampler"].execute(**args | dict(preset="fast", steps=0, scheduler="auto"))  # auto: the preset's
    assert fast.ui["text"][0].startswith("dpmpp_2m_karras, 25 steps; ")
    mine = nodes["MGIESampler"].execute(**args | dict(preset="fast", steps=3, scheduler="auto"))  # a set widget wins
    assert mine.ui["text"][0].startswith("dpmpp_2m_karras, 3 steps; ")
    legacy = nodes["MGIESampler"].execute(**args | dict(preset="as set"))  # a workflow saved before "auto"
    assert legacy.ui["text"][0].startswith("euler, 2 steps; ")
    with pytest.raises(ValueError, match="preset must be one of paper, fast, got 'quick'"):
        nodes["MGIESampler"].execute(**args | dict(preset="quick"))
    with pytest.raises(ValueError, match=r"^steps must be from 1 to 1,000, or 0 \(auto\), got 1001$"):  # as on the node
        nodes["MGIESampler"].execute(**args | dict(steps=1001))


def test_conditioning_from_other_nodes_is_accepted(comfy):
    """An averaged or hand-made CONDITIONING (one entry, batch 1) conditions a whole image batch."""
    nodes = comfy[0]
    handle = load(nodes)
    cond = [[torch.randn(1, 77, 32), {"pooled_output": None}]]
    images, _ = nodes["MGIESampler"].execute(mgie_model=handle, image=comfy_image((16, 16), (16, 16)), positive=cond,
                                             negative=cond, seed=0, steps=2, guidance_scale=3.0,
                                             image_guidance_scale=1.5, scheduler="euler", max_side=0).values
    assert images.shape == (2, 16, 16, 3)


@pytest.mark.skipif(not (harness.ROOT / "mgie_core" / "assets" / "mgie-mini.safetensors").is_file(),
                    reason="mgie-mini is not built")
def test_loader_offers_the_embedded_default(comfy):
    nodes = comfy[0]
    options = next(i for i in nodes["MGIELoader"].define_schema().inputs if i.id == "model").extra["options"]
    assert options[-1] == "mgie-mini (embedded)"
    handle = load(nodes, "mgie-mini (embedded)")
    assert handle.model.info["format"] == "bundle" and handle.model.spec.num_visual_tokens == 8


EDIT = dict(seed=2, steps=3, guidance_scale=7.5, image_guidance_scale=1.5, scheduler="euler_ancestral", max_side=0)


def test_a_mask_limits_the_edit_and_a_small_one_is_resized(comfy):
    nodes = comfy[0]
    handle = load(nodes)
    image = comfy_image((32, 32), (32, 32))
    mask = torch.zeros(1, 8, 8)  # as Load Image's mask editor makes it, at another size: resized to the image
    mask[:, 2:6, 2:6] = 1
    free, _ = nodes["MGIEEdit"].execute(mgie_model=handle, image=image, instruction="make it red", **EDIT).values
    out = nodes["MGIEEdit"].execute(mgie_model=handle, image=image, instruction="make it red", **EDIT, mask=mask)
    masked = out.values[0]
    outside, inside = torch.ones(32, 32, dtype=torch.bool), torch.zeros(32, 32, dtype=torch.bool)
    outside[6:26, 6:26] = False  # the resized mask covers 8..24, feathered by a pixel
    inside[10:22, 10:22] = True
    assert torch.equal(masked[:, outside], image[:, outside])  # both images of the batch: the input outside
    assert (masked[:, inside] - image[:, inside]).abs().mean() > 0.01  # edited inside
    assert not torch.equal(masked, free)
    assert "mask is empty" not in out.ui["text"][0]


def test_sampler_masks_pair_with_images_and_an_empty_mask_returns_the_input(comfy):
    nodes = comfy[0]
    handle = load(nodes)
    image = comfy_image((16, 16), (16, 16))
    cond = [[torch.randn(1, 77, 32), {}]]
    args = dict(mgie_model=handle, image=image, positive=cond, negative=[[torch.zeros(1, 77, 32), {}]], **EDIT)
    masks = torch.zeros(2, 16, 16)
    masks[1] = 1  # the first image is kept, the second edited everywhere
    out = nodes["MGIESampler"].execute(**args, mask=masks)
    free = nodes["MGIESampler"].execute(**args).values[0]
    assert torch.equal(out.values[0][0], image[0]) and torch.equal(out.values[0][1], free[1])
    assert "masks of images [0] are empty" in out.ui["text"][0]
    empty = nodes["MGIESampler"].execute(**args, mask=torch.zeros(1, 16, 16))
    assert torch.equal(empty.values[0], image) and "the image is returned unchanged" in empty.ui["text"][0]
    with pytest.raises(ValueError, match="^3 masks for 2 images: give one mask for all the images, or one per image$"):
        nodes["MGIESampler"].execute(**args, mask=torch.ones(3, 16, 16))


def test_edit_node_applies_one_instruction_per_line_in_turn(comfy):
    nodes, _, utils, _, _ = comfy
    handle = load(nodes)
    image = comfy_image((16, 16))
    edit = nodes["MGIEEdit"]
    out = edit.execute(mgie_model=handle, image=image, instruction="make the sky blue\n\n   \nmake it red\n", **EDIT)
    images, text = out.values
    updates, total = list(utils.updates), 2 * (96 + 3)
    assert updates[-1] == (total, total) and all(t == total for _, t in updates[-total:])  # one bar over both steps
    assert text == "1. paint the whole sky a deep blue.keep the rest as it is.\n2. turn the apple red."
    assert out.ui["text"][0].startswith(text)
    first, _ = edit.execute(mgie_model=handle, image=image, instruction="make the sky blue", **EDIT).values
    chained, _ = edit.execute(mgie_model=handle, image=first, instruction="make it red", **EDIT).values
    assert torch.equal(images, chained)  # the same as two MGIE Edit nodes in a row


@pytest.mark.parametrize("instruction, extra, message", [
    ("\n \n", {}, "^the instruction is empty"),
    ("\n".join(f"step {i}" for i in range(17)), {}, "^17 instructions given; a chain takes at most 16"),
    ("a\nb", {"expressive_override": "x"}, "^the expressive instruction you give replaces the derived one"),
])
def test_edit_node_step_errors(comfy, instruction, extra, message):
    nodes = comfy[0]
    with pytest.raises(ValueError, match=message):
        nodes["MGIEEdit"].execute(mgie_model=load(nodes), image=comfy_image((16, 16)), instruction=instruction,
                                  **EDIT, **extra)


@pytest.mark.parametrize("memory", ["1", "2", "auto"])
def test_the_node_and_the_command_line_place_the_same_memory_answer_alike(comfy, tiny_root, image_path, tmp_path, caplog,
                                                                          memory):
    """A card of 1 GB fits the tiny model only with its LLM in int8, staged; 2 GB whole; auto on a CPU: as loaded."""
    from mgie_core.frontends.cli import main

    handle = load(comfy[0], memory=memory if memory == "auto" else f"{memory} GB")
    with caplog.at_level(logging.INFO, logger="mgie_core"):
        assert main(["edit", "--model", str(tiny_root), "--image", str(image_path), "--instruction", "make it red",
                     "--out", str(tmp_path / "o.png"), "--memory", memory, "--dtype", "fp32", "--device", "cpu",
                     "--steps", "1", "--max-new-tokens", "8"]) == 0
    said = next(r.message for r in caplog.records if r.message.startswith("placement: "))
    assert said == f"placement: {handle.placement.describe()}"
    expected = {"1": ("int8", True), "2": ("none", False), "auto": ("none", False)}[memory]
    assert (handle.placement.llm_quant, handle.placement.staged) == expected
