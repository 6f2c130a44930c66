"""The model: MGIE's modules (the multimodal LLM, the edit head, the UNet and VAE) and LLaMA's tokenizer as
MGIE was trained with it. Files are read and written by :mod:`mgie_core.formats`."""
