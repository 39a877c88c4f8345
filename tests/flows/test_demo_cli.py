"""`layerloop demo` end to end at smoke size: the command users are told to run first, through the CLI, its
flow and the real stages (sizes from a config file, as the precedence allows).

`layerloop ablate` is not here: its six loop runs took 521 s at smoke size on 2 shared cores, too long for the
default tier (tests/report/test_ablate.py covers its table and verdict logic)."""
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
