"""The judge registry: every configurable backend is registered, builds its own class, and nothing else builds."""
from __future__ import annotations

import typing

import pytest

from layerloop.models.judges.base import Judge
from layerloop.models.judges.config import JudgeConfig
from layerloop.models.judges.registry import BACKENDS, build_judge, judge_class


def test_registry_names_the_backends_the_config_allows():
    allowed = typing.get_args(JudgeConfig.model_fields["backend"].annotation)
    assert sorted(BACKENDS) == sorted(allowed)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_each_registered_backend_is_a_judge_class_of_that_name(backend):
    cls = judge_class(backend)
    assert issubclass(cls, Judge) and cls.backend == backend


def test_unknown_backend_is_refused_with_the_known_names():
    cfg = JudgeConfig.model_construct(backend="nope")  # bypasses the Literal, as a hand-made config could
    with pytest.raises(ValueError, match=r"unknown judge backend 'nope'; known: \['cycle', 'openai'"):
        build_judge(cfg)
