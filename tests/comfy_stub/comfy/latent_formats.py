"""Stub of ``comfy.latent_formats``: SD1.5's latent format and its scale factor."""


class SD15:
    def __init__(self, scale_factor=0.18215):
        self.scale_factor = scale_factor
