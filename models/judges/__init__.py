"""Judges that score candidate triplets (qwen, openai-compatible, cycle, oracle; built by name in registry.py)
and the pure acceptance rule (acceptance.py)."""
