"""Prefect flows (seed.py, self_improve.py, evaluate.py, ablate.py) and, in cli/, the `layerloop` command
line, on top of tasks/."""
