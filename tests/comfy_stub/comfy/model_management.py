"""Stub of ``comfy.model_management``: one device (CPU by default), loads recorded, interruption."""

from __future__ import annotations

import torch

DEVICE = torch.device("cpu")
current_loaded_models: list = []
events: list[tuple[str, object]] = []  # ("load" | "unload", patcher)
_interrupted = False


class InterruptProcessingException(Exception):
    pass


def get_torch_device():
    return DEVICE


def unet_offload_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def should_use_fp16(device=None, *args, **kwargs):
    return False


def soft_empty_cache(force=False):
    pass


class LoadedModel:
    def __init__(self, patcher):
        self.model = patcher

    def model_unload(self, memory_to_free=None, unpatch_weights=True):
        self.model.model.to(self.model.offload_device)
        events.append(("unload", self.model))
        return True


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    for patcher in models:
        if not any(loaded.model is patcher for loaded in current_loaded_models):
            patcher.model.to(patcher.load_device)
            current_loaded_models.insert(0, LoadedModel(patcher))
            events.append(("load", patcher))


def unload_all_models():
    for loaded in list(current_loaded_models):
        loaded.model_unload()
    current_loaded_models.clear()


def interrupt_current_processing(value=True):
    global _interrupted
    _interrupted = value


def processing_interrupted():
    return _interrupted


def throw_exception_if_processing_interrupted():
    global _interrupted
    if _interrupted:
        _interrupted = False  # ComfyUI clears the flag when it raises
        raise InterruptProcessingException()


def vae_device():
    return DEVICE


def vae_offload_device():
    return torch.device("cpu")


def unet_manual_cast(weight_dtype, inference_device, supported_dtypes=(torch.float16, torch.bfloat16, torch.float32)):
    return None if weight_dtype in supported_dtypes else torch.float32
