"""Where and how the model runs: devices and precisions, the placement of the parts (resident or staged, the
LLM quantized or not, compiled or not), progress and cancellation."""
