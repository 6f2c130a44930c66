"""Command-line flags made from the settings' one declaration (:mod:`mgie_core.config`): name, help, default and
range or choices. The edit command, ``check``, fine-tuning and mgie-mini's evaluation take their shared settings
through here."""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..config import AUTO, SETTINGS, EditSettings
from ..errors import SettingError

FLAGS = {name: f.metadata["flag"] or "--" + name.replace("_", "-") for name, f in SETTINGS.items()}


def add_settings(parser: argparse.ArgumentParser, cls: type, only: tuple[str, ...] = (),
                 exclude: tuple[str, ...] = ()) -> None:
    """A flag for each declared setting of ``cls`` (its ``only`` ones, less ``exclude``): name, help, default and
    choices from the declaration."""
    for declared in fields(cls):
        if (not only or declared.name in only) and declared.name not in exclude:
            _add_setting(parser, declared)


def _add_setting(parser: argparse.ArgumentParser, declared) -> None:
    setting_flag(parser, declared, declared.default)


def setting_flag(parser: argparse.ArgumentParser, declared, default) -> None:
    """The flag of one declared setting; ``default``: what the flag gives when absent (None: not given, for a
    command that fills its defaults itself, as fine-tuning's ``--config`` file does)."""
    meta = declared.metadata
    shown = "" if "(default:" in meta["help"] else " (default: %(default)s)" if default is not None else \
        f" (default: {declared.default})"
    kwargs = {"default": default, "help": meta["help"] + shown}
    if declared.type == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
    elif meta["choices"]:
        kwargs["choices"] = meta["choices"]
    elif meta["check"] is not None:
        kwargs["metavar"] = "|".join(c.removesuffix(" GB") for c in meta["suggested"]) or None
    else:
        kwargs["type"] = _number(int if declared.type == "int" else float, meta["auto"])
        kwargs["metavar"] = "N"
    parser.add_argument(FLAGS.get(declared.name, "--" + declared.name.replace("_", "-")), dest=declared.name, **kwargs)


def _number(kind: type, auto: bool):
    def parse(text: str):
        if auto and text == AUTO:
            return kind(0)
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}"
                                             f"{' (or auto)' if auto else ''}") from None
    return parse


def settings_from(args: argparse.Namespace, cls: type = EditSettings):
    """The command's settings of ``cls`` (:class:`EditSettings` or :class:`PlacementSettings`), checked; an
    out-of-range value is reported by its flag."""
    try:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})
    except SettingError as err:
        raise err.named(FLAGS) from None
