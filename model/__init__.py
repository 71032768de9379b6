"""MiniMind: config, model, tokenizer, datasets and the shared training engine."""
