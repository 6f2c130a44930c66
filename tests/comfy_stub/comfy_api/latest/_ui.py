"""Stub of ``comfy_api.latest.ui``."""


class PreviewText(dict):
    def __init__(self, value: str):
        super().__init__(text=(value,))
