"""ComfyUI-MGIE: ComfyUI loads this package from custom_nodes/ and calls ``comfy_entrypoint``.

Nothing ComfyUI-specific is imported at module level, so the package also imports cleanly
outside ComfyUI (pytest, scripts); the nodes are imported when ComfyUI asks for them.
"""


async def comfy_entrypoint():
    from .nodes import MGIEExtension

    return MGIEExtension()
