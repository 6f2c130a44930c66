"""The build's VAE stage: its object weighting (the one-hour recipe's --vae-object-weight)."""

from __future__ import annotations

import random

import numpy as np
import torch

from train.mini import world
from train.mini.build import object_weights, pictures
from train.mini.checks import grow, shrink
from train.mini.evaluate import HELD_OUT_SEED


def test_object_pixels_weigh_more_and_the_background_stays_at_one():
    edits = world.edits(HELD_OUT_SEED, 6, tuple(world.FAMILIES))
    x = pictures(edits)  # before and after of each edit
    w = object_weights(x, 5.0)[:, 0].numpy()
    scenes = [s for e in edits for s in (e.before, e.after)]
    for weights, scene in zip(w, scenes):  # every picture has an object or more
        for obj in scene.objects:
            assert (weights[shrink(world.mask(obj), 1)] == 5).all()  # every object's inside, whatever its colour
        assert (weights[~objects(scene)] == 1).mean() > 0.95  # the background (its anti-aliased rims aside)
    assert torch.equal(object_weights(x, 1.0), torch.ones_like(x[:, :1]))  # weight 1: the plain loss


def test_a_global_effect_moves_the_background_and_the_weights_follow_it():
    scene = world.random_scene(random.Random(3))
    night = np.asarray(world.render(scene, "night"), np.float32) / 127.5 - 1
    w = object_weights(torch.from_numpy(night).permute(2, 0, 1)[None], 5.0)[0, 0].numpy()
    assert (w[~grow(objects(scene), 1)] == 1).all()  # the darkened background, its anti-aliased rims aside
    assert (w[objects(scene)] == 5).mean() > 0.9


def objects(scene: world.Scene) -> np.ndarray:
    """Where the scene's objects are, all of them."""
    return np.logical_or.reduce([world.mask(obj) for obj in scene.objects])
