"""Judges that score candidate triplets (qwen, openai-compatible, cycle, oracle) and pure thresholding."""
