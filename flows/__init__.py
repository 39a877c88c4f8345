"""Prefect flows (seed, self_improve, evaluate, ablate) and the `layerloop` CLI, on top of tasks/."""
