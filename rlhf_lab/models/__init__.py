"""Loading models, attention, generation and LoRA: what every stage does with a causal LM."""
