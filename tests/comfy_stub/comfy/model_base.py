"""Stub of ``comfy.model_base``: the prediction types and an InstructPix2Pix model that holds the weights it loads."""

import enum

import torch


class ModelType(enum.Enum):
    EPS = 1
    V_PREDICTION = 2


class _DiffusionModel(torch.nn.Module):
    def load_state_dict(self, state_dict, strict=True, assign=False):
        self.names = list(state_dict)
        for index, value in enumerate(state_dict.values()):  # assign=True: the given Parameter objects themselves
            self.register_parameter(f"w{index}", value if assign else torch.nn.Parameter(value.clone()))


class SD15_instructpix2pix(torch.nn.Module):  # noqa: N801 - ComfyUI's name
    def __init__(self, model_config, model_type=ModelType.EPS, device=None):
        super().__init__()
        self.model_config, self.model_type = model_config, model_type
        self.diffusion_model = _DiffusionModel()
