"""Stub of ``comfy_api.latest.io``: the V3 schema subset the MGIE nodes use, with ComfyUI's widget order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


class _Input:
    io_type = "*"

    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None,
                 default: Any = None, **extra):
        self.id, self.display_name, self.optional, self.tooltip, self.default = id, display_name, optional, tooltip, default
        self.extra = extra

    @property
    def is_widget(self) -> bool:
        return self.io_type in WIDGET_TYPES and not self.extra.get("force_input")


class _Output:
    io_type = "*"

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list: bool = False):
        self.id, self.display_name, self.tooltip = id, display_name, tooltip


def _type(name: str):
    return type(name, (), {
        "io_type": name,
        "Input": type("Input", (_Input,), {"io_type": name}),
        "Output": type("Output", (_Output,), {"io_type": name}),
    })


Image, Mask, Latent, Conditioning = _type("IMAGE"), _type("MASK"), _type("LATENT"), _type("CONDITIONING")
String, Int, Float, Boolean, Combo = _type("STRING"), _type("INT"), _type("FLOAT"), _type("BOOLEAN"), _type("COMBO")
AnyType = _type("*")
Model, Vae = _type("MODEL"), _type("VAE")


def Custom(io_type: str):  # noqa: N802 - mirrors ComfyUI
    return _type(io_type)


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = None
    description: str = ""
    is_output_node: bool = False
    not_idempotent: bool = False
    has_intermediate_output: bool = False  # ComfyUI 0.19 (not 0.3.54)

    def validate(self) -> None:
        ids = [i.id for i in self.inputs]
        out_ids = [o.id for o in self.outputs if o.id is not None]
        if len(set(ids)) != len(ids) or len(set(out_ids)) != len(out_ids) or set(ids) & set(out_ids):
            raise ValueError(f"{self.node_id}: input/output ids must be unique")

    def widget_order(self) -> list[_Input]:
        """Widgets as the frontend lays them out: required as declared, then optional."""
        widgets = [i for i in self.inputs if i.is_widget]
        return [i for i in widgets if not i.optional] + [i for i in widgets if i.optional]


class NodeOutput:
    def __init__(self, *values, ui=None, expand=None, block_execution=None):
        self.values, self.ui = values, ui


class ComfyNode:
    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError
