"""Stub of ``comfy.model_patcher.ModelPatcher``: holds a module and its devices; sets ``.device`` like ComfyUI."""


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
        self.model.device = offload_device  # ComfyUI does this; a read-only property would fail here
