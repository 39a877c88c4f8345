"""`layerloop demo` and `layerloop ablate` end to end at smoke size: the commands users are told to run first,
through the CLI, their flows and the real stages (sizes from a config file, as the precedence allows)."""
from __future__ import annotations

import json

import yaml
from prefect import flow  # noqa: F401 - sets up Prefect logging on the real stderr, not on CliRunner's temporary one
from typer.testing import CliRunner


def _smoke_file(tmp_path, **train) -> str:
    from layerloop.tasks.stages.demo import smoke_overrides

    sizes = smoke_overrides("unused", {"seeds": "unused", "pool": "unused"})
    sizes["train"].update(train)
    for key in ("store",):
        sizes.pop(key)
    for key in ("seeds_path", "pool_path", "rounds"):
        sizes["loop"].pop(key)
    sizes["loop"].update(eval_size=4, control=True, train_final=True, round_train_steps=2)
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(sizes))
    return str(path)


def test_demo_runs_the_loop_and_prints_its_table(prefect_harness, tmp_path):
    from layerloop.flows.cli.main import app
    from layerloop.storage.rounds import RoundStore

    store, inputs = tmp_path / "demo-store", tmp_path / "demo-inputs"
    result = CliRunner().invoke(app, ["demo", "--store", str(store), "--inputs", str(inputs), "--rounds", "1",
                                      "--config", _smoke_file(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "selection rate per round" in result.output and "held-out PSNR, identity baseline" in result.output
    assert "every column: " in result.output and (store / "selection_rate.csv").is_file()
    assert RoundStore(str(store)).committed_rounds() == [0, 1]
    assert (store / "rounds" / "round-0001" / "report.html").is_file()
    assert len(list((inputs / "seeds").iterdir())) > 100  # the demo's 100 labeled seeds (+ its marker file)


def test_ablate_runs_the_four_configurations_and_writes_the_table(prefect_harness, tmp_path):
    from layerloop.flows.cli.main import app

    out = tmp_path / "ablation"
    # the wiring, not the cycle loss (tests/models/test_trainer.py trains it): at weight 0 the C and D runs
    # cost what B does, so six loop runs fit the default tier
    result = CliRunner().invoke(app, ["ablate", "--seed", "0", "--seed", "1", "--rounds", "1", "--out", str(out),
                                      "--config", _smoke_file(tmp_path, cycle_weight=0.0)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "ablation.json").read_text())["summary"]
    assert [s["config"] for s in summary] == ["A", "B", "C", "D"] and all(s["seeds"] == [0, 1] for s in summary)
    markdown = (out / "ablation.md").read_text()
    assert "Paper ordering A < B < C < D reproduced beyond noise:" in markdown
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(
        ["inputs", *[f"{c}-seed{s}" for c in "BCD" for s in (0, 1)]])
