"""End-to-end fine-tuning of MGIE (instruction cross-entropy + 0.5 x diffusion loss), built on mgie_core."""
