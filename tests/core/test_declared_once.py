"""Every setting is declared once (mgie_core/config.py) and resolved once (EditSettings.sample_config /
derive_config): a second copy of a default, a range or a flag elsewhere is the divergence waiting to happen that
this test finds, in every module outside the tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mgie_core.config import PAPER, SAMPLING_PRESETS, SETTINGS

ROOT = Path(__file__).resolve().parents[2]
DECLARATIONS = ROOT / "mgie_core" / "config.py"
FLAGS_MADE = {ROOT / "mgie_core" / "frontends" / "flags.py"}  # where flags are made from the declarations
# Flags that share a declared flag's name but are other settings.
OTHER_MEANING = {("bench", "--preset"): "a random model's size (bench/random_model.py), not the sampling preset",
                 ("mgie_core/frontends/cli.py", "--dtype"): "a bundle's stored precision (convert, merge)",
                 ("mgie_core/frontends/assemble_cli.py", "--dtype"): "a bundle's stored precision"}
WIDGETS_MADE = {ROOT / "nodes" / "widgets.py"}  # where node widgets are made from them
NAMES = {name: (f.metadata["flag"] or "--" + name.replace("_", "-"), f.metadata["widget"] or name)
         for name, f in SETTINGS.items()}


def sources() -> list[Path]:
    skip = {"tests", ".venv", ".git", "build"}
    return [p for p in sorted(ROOT.rglob("*.py")) if not skip & set(p.relative_to(ROOT).parts)]


def declared_values(name: str) -> set:
    """A setting's default, range, and what auto resolves to (the paper's values, the presets')."""
    meta = SETTINGS[name].metadata
    values = {SETTINGS[name].default, meta["low"], meta["high"], PAPER.get(name)} - {None}
    values |= {preset[name] for preset in SAMPLING_PRESETS.values() if name in preset}
    return {v for v in values if not isinstance(v, bool) and v not in (0, 1, "auto", "")}  # too common to mean it


def literal(node: ast.AST):
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return None


def redeclares_flag(node: ast.Call, flag: object, path: Path) -> bool:
    """A declared setting's flag made again with its choices, a declared default, or a default read off a resolved
    config (``default=SampleConfig.guidance_scale``)."""
    name = next((n for n, (f, _) in NAMES.items() if f == flag), None)
    relative = path.relative_to(ROOT).as_posix()
    if name is None or any(relative.startswith(folder) and flag == other for folder, other in OTHER_MEANING):
        return False
    keywords = {k.arg: k.value for k in node.keywords}
    default = keywords.get("default")
    from_config = isinstance(default, ast.Attribute) and getattr(default.value, "id", "") in (
        "SampleConfig", "DeriveConfig", "EditSettings", "PlacementSettings")
    return "choices" in keywords or from_config or (default is not None and literal(default) in declared_values(name))


def second_declarations(path: Path) -> list[str]:
    """``SampleConfig(`` / ``DeriveConfig(`` built by hand, a declared setting's default or range written again (a
    keyword, a parameter's default, a field), its flag or widget made by hand."""
    tree, found = ast.parse(path.read_text(encoding="utf-8")), []
    where = lambda node: f"{path.relative_to(ROOT)}:{node.lineno}"  # noqa: E731
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func in ("SampleConfig", "DeriveConfig"):
                found.append(f"{where(node)}: {func}( built by hand; resolve EditSettings instead")
            for keyword in node.keywords:
                if keyword.arg in SETTINGS and literal(keyword.value) in declared_values(keyword.arg):
                    found.append(f"{where(node)}: {keyword.arg}={literal(keyword.value)!r} repeats its declaration")
            first = literal(node.args[0]) if node.args else None
            if func == "add_argument" and path not in FLAGS_MADE and redeclares_flag(node, first, path):
                found.append(f"{where(node)}: the flag {first} made by hand; use frontends.flags.add_settings")
            if func == "Input" and path not in WIDGETS_MADE and first in {w for _, w in NAMES.values()}:
                found.append(f"{where(node)}: the widget {first!r} made by hand; use nodes.widgets.setting_input")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args.args + node.args.kwonlyargs
            defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults + node.args.kw_defaults
            for argument, default in zip(arguments, defaults):
                if default is not None and argument.arg in SETTINGS and literal(default) in declared_values(argument.arg):
                    found.append(f"{where(node)}: the default {argument.arg}={literal(default)!r} repeats its declaration")
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id in SETTINGS:
            value = node.value
            first = literal(value.args[0]) if isinstance(value, ast.Call) and value.args else literal(value)
            if first in declared_values(node.target.id):
                found.append(f"{where(node)}: the field {node.target.id} = {first!r} repeats its declaration")
    return found


def test_settings_are_declared_and_resolved_once():
    found = [line for path in sources() if path != DECLARATIONS for line in second_declarations(path)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("text, caught", [
    ("config = SampleConfig(num_inference_steps=20)", "SampleConfig( built by hand"),
    ("def execute(cls, max_new_tokens: int = 96): ...", "the default max_new_tokens=96"),
    ("class C:\n    max_new_tokens: int = option(96, 'budget')", "the field max_new_tokens = 96"),
    ("run(guidance_scale=7.5)", "guidance_scale=7.5 repeats"),
    ("parser.add_argument('--memory', choices=('auto', '24'))", "the flag --memory made by hand"),
    ("parser.add_argument('--guidance-scale', default=SampleConfig.guidance_scale)", "the flag --guidance-scale"),
    ("parser.add_argument('--steps', type=int, default=100)", "the flag --steps made by hand"),
    ("io.Int.Input('steps', default=20)", "the widget 'steps' made by hand"),
])
def test_the_check_catches_each_kind_of_second_declaration(tmp_path, text, caught):
    path = ROOT / "bench" / "_probe_declared_once.py"  # inside the tree, as a module would be
    path.write_text(text + "\n")
    try:
        assert any(caught in line for line in second_declarations(path)), second_declarations(path)
    finally:
        path.unlink()
