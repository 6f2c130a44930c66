"""Stub of ``comfy.supported_models.SD15_instructpix2pix``: the model config object and its fields."""

import torch

from . import latent_formats


class SD15_instructpix2pix:  # noqa: N801 - ComfyUI's name
    unet_extra_config = {"num_heads": 8, "num_head_channels": -1}  # ComfyUI's SD1.5 values, applied on creation
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]

    def __init__(self, unet_config):
        self.unet_config = {**unet_config, **self.unet_extra_config}
        self.latent_format = latent_formats.SD15()
        self.sampling_settings = {}
        self.unet_dtype = self.manual_cast_dtype = None

    def set_inference_dtype(self, dtype, manual_cast_dtype):
        self.unet_dtype, self.manual_cast_dtype = dtype, manual_cast_dtype
