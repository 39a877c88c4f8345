"""Credentials of a run from Prefect Secret blocks: loop.secret_env maps environment variables to block names.

The config names blocks, never values, so it stays safe to save with every round and to show in the UI.
At the start of a run each named variable that the environment does not already set is read from its
Secret block into this process's environment, where the libraries that need it look (botocore reads
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, Ray reads RAY_AUTH_TOKEN); a local Ray started afterwards
passes them on to its workers. Values are never logged: errors name the variable and the block only.
"""
from __future__ import annotations

import os

from ..config import ConfigError, PipelineConfig


def apply_secret_env(cfg: PipelineConfig) -> list[str]:
    """Fill the environment from loop.secret_env's Secret blocks; returns the variables it set."""
    if not cfg.loop.secret_env:
        return []
    from prefect.blocks.system import Secret

    applied = []
    for name, block in sorted(cfg.loop.secret_env.items()):
        if os.environ.get(name):
            continue  # the environment wins: a person who exported it meant it
        try:
            value = Secret.load(block).get()
        except ValueError as exc:  # Prefect says a block that does not exist is a ValueError
            raise ConfigError(f"loop.secret_env.{name}: Prefect Secret block {block!r} cannot be loaded "
                              f"({type(exc).__name__}); create it with Secret(value=...).save({block!r})") from None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"loop.secret_env.{name}: Prefect Secret block {block!r} must hold a non-empty string")
        os.environ[name] = value
        applied.append(name)
    return applied
