"""The real qwen backend and VQAScore code on a tiny RANDOM Qwen2.5-VL loaded from a local directory."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from layerloop.models.judges.base import JudgeItem  # noqa: E402
from layerloop.models.judges.config import CRITERIA, JudgeConfig  # noqa: E402
from layerloop.models.judges.qwen_runtime import QwenVL  # noqa: E402
from layerloop.models.judges.registry import build_judge  # noqa: E402
from layerloop.models.judges.vqascore import VQAScorer  # noqa: E402
from tests.judges.conftest import make_triplet, spoil  # noqa: E402
from tests.judges.tiny_qwen import build_tiny_qwen  # noqa: E402


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return build_tiny_qwen(str(tmp_path_factory.mktemp("tiny-qwen")))


def qwen_cfg(path, batch_size):
    return JudgeConfig(backend="qwen", qwen={"path": path, "batch_size": batch_size, "max_pixels": 112 * 112})


@pytest.fixture(scope="module")
def judge_items():
    good = [make_triplet(s) for s in range(3)]
    return [JudgeItem(f"g{i}", t) for i, t in enumerate(good)] + [JudgeItem("bad", spoil(good[0]))]


def test_scores_in_range_and_deterministic(qwen_dir, judge_items):
    judge = build_judge(qwen_cfg(qwen_dir, 4))
    first, second = judge.score(judge_items), judge.score(judge_items)
    for r in first:
        assert r.error is None and r.backend == "qwen"
        assert set(r.scores) == set(CRITERIA) and all(0.0 <= v <= 1.0 for v in r.scores.values())
        assert 0.0 <= r.overall <= 1.0
    for a, b in zip(first, second):
        assert a.scores == pytest.approx(b.scores, abs=1e-6)


def test_batched_equals_unbatched(qwen_dir, judge_items):
    batched = build_judge(qwen_cfg(qwen_dir, 16)).score(judge_items)
    single = build_judge(qwen_cfg(qwen_dir, 1)).score(judge_items)
    for a, b in zip(batched, single):
        assert a.scores == pytest.approx(b.scores, abs=1e-4)


def test_scores_depend_on_the_image(qwen_dir, judge_items):
    res = build_judge(qwen_cfg(qwen_dir, 16)).score(judge_items)
    # a random model has no taste, but it must be looking: different panels -> different numbers
    assert res[0].scores["logo_clean"] != pytest.approx(res[3].scores["logo_clean"], abs=1e-7)


def test_closed_judge_refuses_to_score(qwen_dir, judge_items):
    with build_judge(qwen_cfg(qwen_dir, 4)) as judge:
        assert judge.score(judge_items[:1])[0].error is None
    with pytest.raises(ValueError, match="closed"):
        judge.score(judge_items[:1])


def test_one_visual_token_per_28px(qwen_dir):
    runtime = QwenVL(qwen_dir, max_pixels=112 * 112)
    _, grid, counts = runtime._vision([Image.new("RGB", (56, 56), "red"), Image.new("RGB", (112, 56), "blue")])
    assert grid.tolist() == [[1, 4, 4], [1, 4, 8]] and counts == [4, 8]


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="judge.qwen.path"):
        build_judge(qwen_cfg(str(tmp_path / "nope"), 1))


def test_vqascore_in_range_and_batched_equals_unbatched(qwen_dir):
    images = [make_triplet(s)["logo"] for s in range(3)] + [make_triplet(0)["object"]]
    texts = ["red logo", "blue logo", "a red mug", "a blue mug"]
    batched = VQAScorer(qwen_dir, batch_size=8, max_pixels=112 * 112).score(images, texts)
    single = VQAScorer(qwen_dir, batch_size=1, max_pixels=112 * 112).score(images, texts)
    assert len(batched) == 4 and all(0.0 <= v <= 1.0 for v in batched)
    assert batched == pytest.approx(single, abs=1e-5)
    assert VQAScorer(qwen_dir, max_pixels=112 * 112).score([], []) == []


def test_vqascore_bad_input(qwen_dir):
    scorer = VQAScorer(qwen_dir, max_pixels=112 * 112)
    with pytest.raises(ValueError, match="2 texts"):
        scorer.score([Image.new("RGB", (32, 32))], ["a", "b"])
    with pytest.raises(ValueError, match="non-empty"):
        scorer.score([Image.new("RGB", (32, 32))], ["  "])
