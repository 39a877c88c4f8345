"""Prefect flows (seed, self_improve, evaluate), the composed pipeline config and the layerloop CLI."""
