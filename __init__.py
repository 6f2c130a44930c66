"""ComfyUI-MGIE: ComfyUI loads this package from custom_nodes/ and calls ``comfy_entrypoint``.

Nothing ComfyUI-specific is imported at module level, so the package also imports cleanly
outside ComfyUI (pytest, scripts); the nodes are imported when ComfyUI asks for them.
"""


WEB_DIRECTORY = "./web"  # mgie_text.js: the derived expressive instruction shown on the node after a run


async def comfy_entrypoint():
    from .nodes import MGIEExtension

    return MGIEExtension()
