"""The front ends over the one edit runner (:mod:`mgie_core.runner`): the Python API (:class:`MGIEPipeline`), the
command line, and runs over many pictures. The ComfyUI nodes, in the pack's nodes/ folder, are the fourth."""
