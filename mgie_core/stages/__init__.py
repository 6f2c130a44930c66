"""The three stages of an edit, one module each: derive (the MLLM: expressive instruction and visual tokens),
imagine (the edit head: visual imagination), sample (dual-guidance denoising); with the prompt, decoding,
schedulers and chains of instructions they use. See docs/algorithm.md §2."""
