"""mgie-mini's stand-in for CLIP's pretraining: its vision tower learns to see every object before the MLLM does.

MGIE's vision tower is CLIP ViT-L/14, pretrained on 400M pictures and frozen (docs/algorithm.md); mgie-mini's is a
4-layer ViT trained from scratch. Trained only through the instruction and diffusion losses, such a tower
learns colour and size but hardly shape. Here it learns what each point of the scene holds instead: at every
object's centre its shape, colour and size, and (``position``) its column and row of the grid, at every empty
cell "nothing", each a linear readout of the patch features the projector reads (``mm_vision_select_layer``).
With 8 px patches it sees all of that within 3,000 steps; the recipe then grafts it into the MLLM, frozen, as
LLaVA and MGIE freeze CLIP.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import CLIPVisionModel

from mgie_core.errors import CheckpointError
from mgie_core.formats.aligned import save_aligned
from mgie_core.formats.weights import read_state_dict
from mgie_core.images import clip_pixel_values
from mgie_core.model.mgie import MGIEModel, clip_vision_config_from

from . import world
from .model import VISION, clip_image_config
from .schedule import warmup_cosine

COLOURS = list(world.COLOURS)
NOTHING = len(world.SHAPES)  # the shape class of an empty cell
HEADS = {"shape": len(world.SHAPES) + 1, "colour": len(COLOURS), "size": len(world.RADIUS)}
WHERE = {"column": world.GRID, "row": world.GRID}  # --position: where each object is, too (its cell of the grid)
LABELS = [*HEADS, *WHERE]  # the columns of targets()'s labels
VALIDATION_SEED = 99  # the accuracy check's scenes (training draws its own from --seed's stream)


def tower_config(patch_size: int) -> dict:
    return {**VISION, "patch_size": patch_size}


def new_tower(patch_size: int, seed: int = 0) -> CLIPVisionModel:
    torch.manual_seed(seed)
    return CLIPVisionModel(clip_vision_config_from(tower_config(patch_size)))


def cell_centre(cell: int) -> tuple[float, float]:
    step = world.SIZE / world.GRID
    return (cell % world.GRID + 0.5) * step, (cell // world.GRID + 0.5) * step


def targets(scenes: list[world.Scene]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where to read and what is there: (P, 2) points in grid_sample's [-1, 1] coordinates, (P,) scene of
    each point, (P, 5) labels shape / colour / size / column / row (``LABELS``; -100, ignored, for all but the
    shape of nothing)."""
    points, rows, labels = [], [], []
    for row, scene in enumerate(scenes):
        for obj in scene.objects:
            points.append(obj.center())
            labels.append((world.SHAPES.index(obj.shape), COLOURS.index(obj.colour), list(world.RADIUS).index(obj.size),
                           obj.cell % world.GRID, obj.cell // world.GRID))
        for cell in sorted(set(range(world.GRID**2)) - {o.cell for o in scene.objects}):
            points.append(cell_centre(cell))
            labels.append((NOTHING, -100, -100, -100, -100))
        rows += [row] * (len(points) - len(rows))
    xy = torch.tensor(points) / (world.SIZE / 2) - 1
    return xy, torch.tensor(rows), torch.tensor(labels)


class Readout(nn.Module):
    """Linear readouts of shape, colour and size (and with ``position``, an object's column and row of the grid)
    from the tower's patch features at given points."""

    def __init__(self, hidden_size: int, position: bool = False):
        super().__init__()
        self.heads = {**HEADS, **(WHERE if position else {})}
        self.linear = nn.Linear(hidden_size, sum(self.heads.values()))

    def forward(self, patches: torch.Tensor, xy: torch.Tensor, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        side = int(patches.shape[1] ** 0.5)
        grid = patches.reshape(len(patches), side, side, -1).permute(0, 3, 1, 2)  # (B, C, h, w), row-major patches
        features = F.grid_sample(grid[rows], xy.to(grid)[:, None, None], align_corners=False)[:, :, 0, 0]  # (P, C)
        return dict(zip(self.heads, self.linear(features).split(list(self.heads.values()), dim=-1)))


def patch_features(tower: CLIPVisionModel, pixels: torch.Tensor, select_layer: int) -> torch.Tensor:
    """What the projector reads: the patch tokens (CLS dropped) of layer ``select_layer``."""
    return tower(pixels, output_hidden_states=True).hidden_states[select_layer][:, 1:]


def scene_batch(rng: random.Random, count: int) -> tuple[list[world.Scene], torch.Tensor]:
    scenes = [world.random_scene(rng) for _ in range(count)]
    return scenes, torch.stack([clip_pixel_values(world.render(s), clip_image_config()) for s in scenes])


def read(tower, readout, scenes, pixels, select_layer: int = -2) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The readout's logits at every point of ``scenes`` and, beside each head's, its labels (on the CPU)."""
    xy, rows, labels = targets(scenes)
    logits = readout(patch_features(tower, pixels.to(tower.device), select_layer), xy, rows.to(tower.device))
    return logits, {name: labels[:, LABELS.index(name)] for name in readout.heads}


def losses(tower, readout, scenes, pixels, select_layer: int = -2) -> dict[str, torch.Tensor]:
    logits, labels = read(tower, readout, scenes, pixels, select_layer)
    return {name: F.cross_entropy(logits[name], labels[name].to(tower.device)) for name in readout.heads}


@torch.no_grad()
def accuracy(tower, readout, count: int = 500, select_layer: int = -2) -> dict[str, float]:
    """Held-out accuracy: the shape of objects (and of small ones), their colour and size (and column and row,
    where the readout has them), and empty cells."""
    logits, labels = read(tower, readout, *scene_batch(random.Random(VALIDATION_SEED), count), select_layer)
    right = {name: logits[name].argmax(-1).cpu() == labels[name] for name in readout.heads}
    objects, small = labels["shape"] != NOTHING, labels["size"] == list(world.RADIUS).index("small")
    return {"shape": right["shape"][objects].float().mean().item(),
            "shape, small": right["shape"][small].float().mean().item(),
            **{name: right[name][objects].float().mean().item() for name in readout.heads if name != "shape"},
            "nothing": right["shape"][~objects].float().mean().item()}


def train_perception(tower: CLIPVisionModel, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                     log: Path | None = None, select_layer: int = -2, position: bool = False) -> Readout:
    """Train ``tower`` and a readout on what each point of a scene holds (with ``position``, where it is too);
    returns the readout, the tower frozen."""
    readout = Readout(tower.config.hidden_size, position).to(tower.device)
    params = list(readout.parameters()) + list(tower.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps))
    tower.train().requires_grad_(True)
    rng, began = random.Random(seed), time.time()
    for step in range(steps):
        parts = losses(tower, readout, *scene_batch(rng, batch_size), select_layer)
        loss = sum(parts.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if log and ((step + 1) % 100 == 0 or step + 1 == steps):
            row = {"phase": "perception", "step": step + 1, **{k: v.item() for k, v in parts.items()},
                   "seconds": time.time() - began}
            with open(log, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    tower.eval().requires_grad_(False)
    readout.eval().requires_grad_(False)
    return readout


def save_tower(tower: CLIPVisionModel, patch_size: int, out: Path, record: dict) -> Path:
    meta = {"clip_config": json.dumps(tower_config(patch_size)), "record": json.dumps(record)}
    return save_aligned(tower.state_dict(), out, metadata=meta)


def load_tower(path: str | Path) -> tuple[CLIPVisionModel, dict, dict]:
    """A tower written by :func:`save_tower`, its CLIP config (the patch size the bundle must record) and
    its record (how it was trained, its accuracy)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no perception tower at {path.resolve()}; the recipe makes one (python -m train.mini.recipe)")
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        config, record = json.loads(meta["clip_config"]), json.loads(meta.get("record", "{}"))
    except (KeyError, ValueError, OSError) as err:
        raise CheckpointError(f"{path} is not a perception tower written by the recipe ({err})") from None
    tower = CLIPVisionModel(clip_vision_config_from(config))
    tower.load_state_dict(read_state_dict(path))
    return tower.eval().requires_grad_(False), config, record


def graft(model: MGIEModel, tower: CLIPVisionModel, config: dict) -> None:
    """Put a perception ``tower`` into ``model``'s MLLM (frozen), with what the bundle and the prompt follow:
    its CLIP config and the number of ``<im_patch>`` tokens (64 for 8 px patches of a 64 px picture)."""
    model.mllm.vision_tower = tower.to(model.mllm.device, model.mllm.dtype).eval().requires_grad_(False)
    model.mllm.train_vision_tower = False
    model.info["clip_config"] = dict(config)
    model.spec = dataclasses.replace(model.spec, num_image_patches=(config["image_size"] // config["patch_size"]) ** 2)
