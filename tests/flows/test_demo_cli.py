"""`layerloop demo` and `layerloop ablate` end to end at smoke size: through the CLI, their flows and the real
stages (sizes from a config file, as the precedence allows). The ablation's table and verdict logic are
tests/report/test_ablate.py's."""
from __future__ import annotations

import yaml
from prefect import flow  # noqa: F401 - sets up Prefect logging on the real stderr, not on CliRunner's temporary one
from typer.testing import CliRunner


def _smoke_file(tmp_path) -> str:
    from layerloop.tasks.stages.demo import smoke_overrides

    sizes = smoke_overrides("unused", {"seeds": "unused", "pool": "unused"})
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


def test_ablate_runs_every_configuration_and_writes_its_table(prefect_harness, tmp_path):
    import json

    from layerloop.flows.cli.main import app
    from layerloop.storage.rounds import RoundStore

    smoke = yaml.safe_load(open(_smoke_file(tmp_path)))
    smoke["train"]["cycle_weight"] = 0.5  # C and D need a cycle term; the smoke sizes have none
    smoke["loop"].update(control=False, eval_size=2)
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(smoke))
    out = tmp_path / "ablation"
    result = CliRunner().invoke(app, ["ablate", "--seed", "0", "--seed", "1", "--rounds", "1", "--out", str(out),
                                      "--config", str(tmp_path / "smoke.yaml")])
    assert result.exit_code == 0, result.output
    assert "Paper ordering A < B < C < D reproduced beyond noise:" in result.output
    table = json.loads((out / "ablation.json").read_text())
    assert [s["config"] for s in table["summary"]] == ["A", "B", "C", "D"]
    assert sorted((r["config"], r["seed"]) for r in table["rows"]) == [(c, s) for c in "ABCD" for s in (0, 1)]
    assert [s["step"] for s in table["steps"]] == ["A -> B", "B -> C", "C -> D"]
    for name in "BCD":  # every run's own store: seed round and one data round, all verified
        for seed in (0, 1):
            store = RoundStore(str(out / f"{name}-seed{seed}" / "store"))
            assert store.committed_rounds() == [0, 1] and store.verify() == []
    # the ablated parts differ where they should: D's round keeps pool rows (the cycle stage), B's has none
    pool_rows = {name: (RoundStore(str(out / f"{name}-seed0" / "store")).read(1, "all")["source"] == "cycle").sum()
                 for name in "BD"}
    assert pool_rows["B"] == 0 and pool_rows["D"] > 0
