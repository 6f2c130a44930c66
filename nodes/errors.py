"""How an MGIE error reads in ComfyUI: a title that names the problem, then mgie_core's sentence.

ComfyUI titles a failed node's error with its exception class's ``module.qualname`` (the bare name for a
builtin), and its frontend shows ``title: message`` in a few lines. For mgie_core's errors that title was the
pack's folder path and ``mgie_core.errors.InputError``, which filled the lines before the sentence began.
Every node's ``execute`` is wrapped once (``titled_errors``, applied in ``nodes/__init__.py``) so that an
mgie_core error leaves it as a subclass of the same error, whose title is a few words: "MGIE input error: the
instruction is empty: ...". Its traceback is the original's; other exceptions (cancel, out of memory) pass as
they are, so ComfyUI still recognises them.
"""

from __future__ import annotations

import functools

from ..mgie_core import CheckpointError, EditCancelled, InputError, MGIEError, SettingError

# most specific first: SettingError is an InputError
TITLES: list[tuple[type[MGIEError], str]] = [
    (SettingError, "MGIE setting error"),
    (InputError, "MGIE input error"),
    (CheckpointError, "MGIE model file error"),
    (EditCancelled, "MGIE edit cancelled"),
    (MGIEError, "MGIE error"),
]
# a builtin's module is left out of the title, so the class's name is the whole title
_TITLED = {base: type(title, (base,), {"__module__": "builtins"}) for base, title in TITLES}


def titled(error: MGIEError) -> MGIEError:
    """``error`` as an instance of its titled subclass: the same message, fields and traceback."""
    base = next(base for base, _ in TITLES if isinstance(error, base))
    shown = Exception.__new__(_TITLED[base], *error.args)
    shown.__dict__.update(error.__dict__)
    return shown.with_traceback(error.__traceback__)


def titled_errors(node: type) -> type:
    """Wrap ``node.execute`` so that the mgie_core errors it raises reach ComfyUI titled; returns ``node``."""
    execute = node.execute.__func__

    @functools.wraps(execute)
    def wrapped(cls, *args, **kwargs):
        try:
            return execute(cls, *args, **kwargs)
        except MGIEError as error:
            raise titled(error) from None

    node.execute = classmethod(wrapped)
    return node
