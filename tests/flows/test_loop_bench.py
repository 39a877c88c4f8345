"""bench/loop.py --quick runs end to end: the loop, its control and both baselines trained and scored.

The baselines call the adapter stage's trainer directly, so a change of its signature broke them without any
test noticing (the compute-matched control of a full CPU run died after its loop's three rounds)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_loop_bench_quick_trains_and_scores_every_baseline(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "loop.py"), "--quick", "--threads", "1",
                           "--work", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    scored = {(row["variant"], row["inference"]) for row in result["final"]}
    for variant in ("seed", "control", "loop", "compute_control", "supervised"):
        assert {(variant, "one"), (variant, "consensus")} <= scored, variant
    pairs = {(i["a"], i["b"]) for i in result["intervals"]}
    assert ("compute_control+one", "loop+one") in pairs and ("control+consensus", "loop+consensus") in pairs
    assert all(i["lo"] <= i["mean"] <= i["hi"] and math.isfinite(i["mean"]) for i in result["intervals"])
