"""The edit world of mgie-mini: procedural scenes and (input, instruction, expressive, target) quadruples.

A scene is a plain background with 2-4 flat shapes (circle, square, triangle; six colours; small or
large) on a 3x3 grid. Edits recolour, remove or add an object, or change the whole picture
(brighter, darker, warmer, cooler, night). The *ambiguous* family is the point of MGIE: the brief
instruction cannot be carried out without looking ("make the biggest shape red", "make the odd one
out blue", "make it look like sunset"); its expressive instruction names the concrete target
("turn the large blue circle red.").

Everything is deterministic by seed. ``python -m train.mini.world --out DIR --count N`` writes the
JSONL training format of ``train/`` (see train/data.py), so it doubles as an example data set.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # pixels
SUPERSAMPLE = 4
GRID = 3
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (240, 210, 40), "purple": (150, 60, 190), "orange": (245, 140, 30),
}
BACKGROUNDS = {"light": (236, 236, 236), "sand": (225, 210, 170), "slate": (70, 80, 100)}
SHAPES = ("circle", "square", "triangle")
RADIUS = {"small": 5.0, "large": 9.5}
SLOTS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
FAMILIES = ("recolour", "remove", "add", "global", "ambiguous")
AMBIGUOUS = ("biggest", "smallest", "odd_one_out", "leftmost", "sunset")


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, reading order
    dx: float = 0.0
    dy: float = 0.0

    def words(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"

    def center(self) -> tuple[float, float]:
        step = SIZE / GRID
        return ((self.cell % GRID + 0.5) * step + self.dx, (self.cell // GRID + 0.5) * step + self.dy)


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Obj, ...]


@dataclass(frozen=True)
class Edit:
    """One quadruple plus what the checks need: the family, the kind of change, the object touched."""

    family: str
    kind: str  # recolour | remove | add | brighter | darker | warmer | cooler | night | sunset
    instruction: str
    expressive: str
    before: Scene
    after: Scene
    target: Obj | None = None  # the object recoloured, removed or added (as it is in ``after`` for add)
    new_colour: str | None = None
    required_words: tuple[str, ...] = field(default=())


# -- rendering -----------------------------------------------------------------------------------
def _draw(draw: ImageDraw.ImageDraw, obj: Obj, fill) -> None:
    cx, cy = (c * SUPERSAMPLE for c in obj.center())
    r = RADIUS[obj.size] * SUPERSAMPLE
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif obj.shape == "square":
        h = r * 0.88
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)], fill=fill)


def render(scene: Scene, effect: str | None = None) -> Image.Image:
    """The scene as a 64x64 RGB picture (drawn 4x larger and reduced, for smooth edges)."""
    big = Image.new("RGB", (SIZE * SUPERSAMPLE,) * 2, BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(big)
    for obj in scene.objects:
        _draw(draw, obj, COLOURS[obj.colour])
    image = big.resize((SIZE, SIZE), Image.Resampling.BOX)
    return apply_effect(image, effect) if effect else image


def mask(obj: Obj) -> np.ndarray:
    """Boolean (64, 64) coverage of ``obj`` (more than half of a pixel)."""
    big = Image.new("L", (SIZE * SUPERSAMPLE,) * 2, 0)
    _draw(ImageDraw.Draw(big), obj, 255)
    return np.asarray(big.resize((SIZE, SIZE), Image.Resampling.BOX)) > 127


def apply_effect(image: Image.Image, effect: str) -> Image.Image:
    """Global edits, on float RGB in [0, 1]."""
    x = np.asarray(image, np.float32) / 255.0
    if effect == "brighter":
        x = x + (1 - x) * 0.4
    elif effect == "darker":
        x = x * 0.55
    elif effect == "warmer":
        x = x * np.array([1.08, 1.0, 0.8]) + np.array([0.08, 0.03, 0.0])
    elif effect == "cooler":
        x = x * np.array([0.8, 0.95, 1.08]) + np.array([0.0, 0.02, 0.08])
    elif effect == "night":
        x = x * 0.4 + np.array([0.0, 0.02, 0.12])
    elif effect == "sunset":
        x = x * 0.8 * (1 - 0.35) + np.array([1.0, 0.55, 0.25]) * 0.35
    else:
        raise ValueError(effect)
    return Image.fromarray((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8))


# -- scenes and edits ----------------------------------------------------------------------------
def random_scene(rng: random.Random, count: int | None = None, sizes: list[str] | None = None,
                 shapes: list[str] | None = None, colours: list[str] | None = None) -> Scene:
    count = count or rng.randint(2, 4)
    cells = rng.sample(range(GRID * GRID), count)
    objects = []
    for i, cell in enumerate(cells):
        size = sizes[i] if sizes else rng.choice(list(RADIUS))
        jitter = 2.0 if size == "large" else 4.0
        objects.append(Obj(shape=shapes[i] if shapes else rng.choice(SHAPES),
                           colour=colours[i] if colours else rng.choice(list(COLOURS)), size=size, cell=cell,
                           dx=rng.uniform(-jitter, jitter), dy=rng.uniform(-jitter, jitter)))
    return Scene(background=rng.choice(list(BACKGROUNDS)), objects=tuple(objects))


def _unique_shape_scene(rng: random.Random) -> tuple[Scene, Obj]:
    """A scene where the returned object's shape occurs once, so "the {shape}" is well defined."""
    while True:
        scene = random_scene(rng)
        target = rng.choice(scene.objects)
        if sum(o.shape == target.shape for o in scene.objects) == 1:
            return scene, target


def _recoloured(scene: Scene, target: Obj, colour: str) -> Scene:
    return replace(scene, objects=tuple(replace(o, colour=colour) if o == target else o for o in scene.objects))


def _new_colour(rng: random.Random, old: str) -> str:
    return rng.choice([c for c in COLOURS if c != old])


def recolour_edit(rng: random.Random, scene: Scene, target: Obj, instruction: str, family: str) -> Edit:
    new = _new_colour(rng, target.colour)
    return Edit(family, "recolour", instruction.format(new=new), f"turn the {target.words()} {new}.", scene,
                _recoloured(scene, target, new), target, new, (target.colour, target.shape, new))


def make_recolour(rng: random.Random) -> Edit:
    scene, target = _unique_shape_scene(rng)
    template = rng.choice(["make the {shape} {{new}}", "paint the {shape} {{new}}", "change the {shape} to {{new}}",
                           "turn the {shape} {{new}}"])
    return recolour_edit(rng, scene, target, template.format(shape=target.shape), "recolour")


def make_remove(rng: random.Random) -> Edit:
    scene, target = _unique_shape_scene(rng)
    instruction = rng.choice(["remove the {}", "delete the {}", "take away the {}", "get rid of the {}"]).format(target.shape)
    after = replace(scene, objects=tuple(o for o in scene.objects if o != target))
    return Edit("remove", "remove", instruction, f"remove the {target.words()}.", scene, after, target, None,
                ("remove", target.colour, target.shape))


def make_add(rng: random.Random) -> Edit:
    scene = random_scene(rng, count=rng.randint(1, 3))
    free = [c for c in range(GRID * GRID) if c not in {o.cell for o in scene.objects}]
    added = Obj(shape=rng.choice(SHAPES), colour=rng.choice(list(COLOURS)), size="small", cell=free[0])
    # Not "put a {colour} {shape} in the picture": derivation bans repeating any 3 prompt tokens (docs/algorithm.md §2.5),
    # and "{colour} {shape} in" opens the right answer, which that template made unsayable.
    instruction = rng.choice(["add a {} {}", "put a {} {} somewhere", "draw a {} {}"]).format(added.colour, added.shape)
    return Edit("add", "add", instruction, f"add a small {added.colour} {added.shape} in the {SLOTS[added.cell]}.",
                scene, replace(scene, objects=scene.objects + (added,)), added, added.colour,
                ("add", added.colour, added.shape, SLOTS[added.cell]))


GLOBAL = {
    "brighter": (["make it brighter", "brighten it", "more light please"], "brighten the whole image."),
    "darker": (["make it darker", "dim the picture", "less light please"], "darken the whole image."),
    "warmer": (["make it warmer", "warm it up", "warmer colours"], "give every colour a warm tint."),
    "cooler": (["make it cooler", "cool it down", "colder colours"], "give every colour a cool blue tint."),
    "night": (["make it night", "turn day into night", "it should be nighttime"],
              "turn the scene into a dark blue night."),
}


def make_global(rng: random.Random) -> Edit:
    kind = rng.choice(list(GLOBAL))
    templates, expressive = GLOBAL[kind]
    scene = random_scene(rng)
    return Edit("global", kind, rng.choice(templates), expressive, scene, scene, required_words=(expressive.split()[-1][:-1],))


def make_ambiguous(rng: random.Random, kind: str | None = None) -> Edit:
    kind = kind or rng.choice(AMBIGUOUS)
    if kind == "sunset":
        scene = random_scene(rng)
        return Edit("ambiguous", "sunset", rng.choice(["make it look like sunset", "golden hour please",
                                                       "as if the sun were setting"]),
                    "bathe the scene in warm orange sunset light.", scene, scene, required_words=("sunset",))
    count = rng.randint(2, 4)
    if kind in ("biggest", "smallest"):
        odd, rest = ("large", "small") if kind == "biggest" else ("small", "large")
        sizes = [odd] + [rest] * (count - 1)
        rng.shuffle(sizes)
        scene = random_scene(rng, count=count, sizes=sizes)
        target = next(o for o in scene.objects if o.size == odd)
        word = rng.choice(["biggest", "largest"] if kind == "biggest" else ["smallest", "tiniest"])
        instruction = rng.choice(["make the {} shape {{new}}", "paint the {} one {{new}}"]).format(word)
    elif kind == "odd_one_out":
        count = max(count, 3)
        common, odd = rng.sample(SHAPES, 2)
        shapes = [odd] + [common] * (count - 1)
        rng.shuffle(shapes)
        scene = random_scene(rng, count=count, shapes=shapes)
        target = next(o for o in scene.objects if o.shape == odd)
        instruction = rng.choice(["make the odd one out {new}", "paint the one that does not belong {new}"])
    else:  # leftmost: the object with the smallest column, unique
        while True:
            scene = random_scene(rng, count=count)
            columns = sorted(o.cell % GRID for o in scene.objects)
            if columns[0] != columns[1]:
                break
        target = min(scene.objects, key=lambda o: o.cell % GRID)
        instruction = rng.choice(["make the leftmost shape {new}", "paint the shape furthest left {new}"])
    return recolour_edit(rng, scene, target, instruction, "ambiguous")


MAKERS = {"recolour": make_recolour, "remove": make_remove, "add": make_add, "global": make_global,
          "ambiguous": make_ambiguous}


def make_edit(rng: random.Random, family: str | None = None) -> Edit:
    return MAKERS[family or rng.choice(FAMILIES)](rng)


def images(edit: Edit) -> tuple[Image.Image, Image.Image]:
    """(input, target) pictures of an edit."""
    before = render(edit.before)
    if edit.kind in GLOBAL or edit.kind == "sunset":
        return before, apply_effect(before, edit.kind)
    return before, render(edit.after)


def edits(seed: int, count: int, families: tuple[str, ...] = FAMILIES) -> list[Edit]:
    """``count`` edits, ``families`` in turn (so each is equally represented), deterministic by seed."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        raise ValueError(f"families must be some of {', '.join(FAMILIES)}; got {', '.join(families) or 'none'}")
    rng = random.Random(seed)
    return [make_edit(rng, families[i % len(families)]) for i in range(count)]


def write_dataset(out: Path, seed: int, count: int) -> Path:
    """Write ``count`` quadruples as PNGs plus ``train.jsonl`` (the format train/finetune.py reads)."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, edit in enumerate(edits(seed, count)):
        before, after = images(edit)
        before.save(out / "images" / f"{i:06d}_input.png")
        after.save(out / "images" / f"{i:06d}_target.png")
        lines.append(json.dumps({"input": f"images/{i:06d}_input.png", "target": f"images/{i:06d}_target.png",
                                 "instruction": edit.instruction, "expressive": edit.expressive,
                                 "family": edit.family}))
    manifest = out / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description="Write edit-world quadruples in train/'s JSONL format.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_dataset(Path(args.out), args.seed, args.count))


if __name__ == "__main__":
    main()
