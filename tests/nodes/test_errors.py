"""What an artist reads when a node fails: ComfyUI's title (the exception class's ``module.qualname``, the bare name
for a builtin) names the problem in a few words, and mgie_core's sentence follows unchanged."""

from __future__ import annotations

import sys
import traceback
from types import SimpleNamespace

import pytest


def comfy_title(error: BaseException) -> str:
    """The title ComfyUI 0.19.3's execution.py (full_type_name) gives an exception raised by a node."""
    klass = type(error)
    return klass.__qualname__ if klass.__module__ == "builtins" else f"{klass.__module__}.{klass.__qualname__}"


def failure(call) -> BaseException:
    with pytest.raises(Exception) as caught:
        call()
    return caught.value


def test_errors_are_titled_by_the_problem_not_the_module_path(comfy):
    nodes = comfy[0]
    loader = nodes["MGIELoader"]
    cases = [
        (lambda: loader.execute(model="(no MGIE model found in models/mgie)"), "MGIE input error",
         "no MGIE model found in ComfyUI/models/mgie: build MGIE-7B with"),
        (lambda: loader.execute(model="tiny", dtype="fp8"), "MGIE setting error", "dtype must be one of"),
        (lambda: loader.execute(model="gone"), "MGIE model file error", "MGIE model 'gone' not found; looked in"),
    ]
    for call, title, start in cases:
        error = failure(call)
        assert comfy_title(error) == title and str(error).startswith(start)
        assert f"{title}: {start}" in "".join(traceback.format_exception_only(type(error), error))


def test_a_titled_error_is_still_the_core_error_with_its_fields_and_traceback(comfy):
    nodes = comfy[0]
    handle = SimpleNamespace(model=SimpleNamespace(recommended_sampling={}))  # sampling settings fail before any model use
    error = failure(lambda: nodes["MGIESampler"].execute(
        mgie_model=handle, image=None, positive=[], negative=[], seed=0, steps=1001, guidance_scale=0,
        image_guidance_scale=0, scheduler="euler", max_side=0))
    core = sys.modules["ComfyUI-MGIE.mgie_core.errors"]  # the pack's own copy of mgie_core
    assert isinstance(error, core.SettingError) and isinstance(error, ValueError)
    assert comfy_title(error) == "MGIE setting error" and error.field == "steps"
    assert str(error) == "steps must be from 1 to 1,000, or 0 (auto), got 1001"
    frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    assert "check_setting" in frames  # the traceback still leads to where the core raised it


def test_other_exceptions_pass_unchanged(comfy):
    nodes = comfy[0]
    handle = SimpleNamespace(model=None)  # not a model: a plain AttributeError from inside the node
    error = failure(lambda: nodes["MGIESampler"].execute(
        mgie_model=handle, image=None, positive=[], negative=[], seed=0, steps=2, guidance_scale=0,
        image_guidance_scale=0, scheduler="euler", max_side=0))
    assert type(error) is AttributeError
