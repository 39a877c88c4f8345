"""loop.executor: ray on a real local Ray cluster of 2 workers (2 CPUs, 2 logical GPUs), started once for
the module through tasks/executor.session and stopped after it (leftover workers killed by pid).

A round fanned out on Ray commits the same manifest as the local executor (same config and seeds), each
worker builds its model once and every GPU unit gets a GPU; a worker SIGKILLed mid-unit costs that unit
a rerun, nothing is lost or duplicated (the kill waits for a unit held at a gate in the worker:
tests/flows/ray_gate.py).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import pandas as pd
import pytest

from layerloop.storage import schema as S
from layerloop.storage.rounds import RoundStore

from tests.flows.ray_gate import Gate
from tests.flows.ray_gate import runtime_env as gate_runtime_env
from tests.flows.ray_procs import descendants, kill_leftovers, ray_processes

pytest.importorskip("prefect_ray", reason="the ray extra: pip install 'layerloop[ray]' (make test installs it)")

VOLATILE = [S.SHARD, S.CREATED_AT, S.META_SHA256]  # random run ids and times; the rest must match


def _cfg(store: str, inputs: dict, **loop):
    from layerloop.tasks.config import load_config
    from layerloop.tasks.stages.demo import smoke_overrides

    overrides = smoke_overrides(store, inputs)
    # a slot of its own: a flow test before this one kills a run holding the default `gpu` slot, whose
    # lease the session's test server keeps until it expires
    overrides["loop"].update(gpu_slot="gpu-ray-tests", **loop)
    return load_config(None, overrides=overrides)


def _ray_cfg(store: str, inputs: dict, runtime_env: dict | None = None):
    return _cfg(store, inputs, executor="ray",
                ray={"local_cpus": 2, "local_gpus": 2, "num_gpus": 1, "runtime_env": runtime_env or {}})


@pytest.fixture(scope="module")
def seeded(prefect_harness, tiny_inputs, tmp_path_factory):
    """A store with round 0 and the seed adapter, made once; tests run round 1 on copies of it."""
    import torch

    from layerloop.flows.seed import seed

    torch.set_num_threads(1)
    path = str(tmp_path_factory.mktemp("seeded") / "store")
    seed(_cfg(path, tiny_inputs))
    return path


def _copy(seeded: str, tmp_path, name: str) -> str:
    dest = str(tmp_path / name)
    shutil.copytree(seeded, dest)
    return dest


@pytest.fixture(scope="module")
def local_round(seeded, tiny_inputs, tmp_path_factory):
    """Round 1 with the local executor: the reference manifest."""
    from layerloop.flows.self_improve import improve_round

    store = _copy(seeded, tmp_path_factory.mktemp("local"), "store")
    improve_round(_cfg(store, tiny_inputs), 1)
    return _canon(RoundStore(store).read(1, "all"))


@pytest.fixture(scope="module")
def ray_cluster(prefect_harness, s3_server, tiny_inputs, tmp_path_factory):
    """A local Ray of 2 CPUs and 2 logical GPUs for the module; its processes are gone afterwards. Started
    after the moto server, so its workers have the (dummy) S3 credentials in their environment."""
    from layerloop.tasks.runtime import executor

    gate = Gate(tmp_path_factory.mktemp("gate"))  # unarmed: units pass until a test arms it
    cfg = _ray_cfg(str(tmp_path_factory.mktemp("unused")), tiny_inputs, gate_runtime_env(gate.folder))
    before = set(descendants(os.getpid()))  # the test server, moto, ...: not Ray's, never touched
    started: set[int] = set()
    try:
        with executor.session(cfg):
            started |= ray_processes(before)
            yield gate
            started |= ray_processes(before)
    finally:
        kill_leftovers(started)  # an idle worker can outlive ray.shutdown(); only Ray's, by pid


def _canon(df: pd.DataFrame) -> pd.DataFrame:
    out = df.drop(columns=VOLATILE).sort_values(S.SAMPLE_ID).reset_index(drop=True)
    for col in (S.PANELS, S.SHA256, S.SIZES, S.CONVERSIONS):
        out[col] = out[col].map(list)
    return out


def _ray_round(seeded: str, tiny_inputs: dict, tmp_path, name: str, store_uri: str | None = None,
               storage_options: dict | None = None) -> tuple[RoundStore, dict]:
    from layerloop.flows.self_improve import improve_round
    from layerloop.tasks.runtime import executor

    cfg = _ray_cfg(store_uri or _copy(seeded, tmp_path, name), tiny_inputs)
    if storage_options:
        cfg = cfg.model_copy(update={"store": cfg.store.model_copy(update={"storage_options": storage_options})})
    executor.round_flow(improve_round, cfg)(cfg, 1)
    store = RoundStore(cfg.store.uri, cfg.store.storage_options)
    return store, store.round_info(1)["info"]["execution"]


def _upload(local_root: str, store: RoundStore) -> None:
    for folder, _, files in os.walk(local_root):
        for name in files:
            path = os.path.join(folder, name)
            store.fs.put_file(path, f"{store.root}/{os.path.relpath(path, local_root)}")


def test_ray_round_equals_local_round_with_one_model_per_worker(ray_cluster, seeded, local_round, tiny_inputs,
                                                                tmp_path):
    store, execution = _ray_round(seeded, tiny_inputs, tmp_path, "ray")
    got = _canon(store.read(1, "all"))
    assert len(got) == len(local_round) > 0
    pd.testing.assert_frame_equal(got, local_round)  # sample ids, content hashes, scores, decisions
    assert store.verify() == []

    procs = execution["processes"]
    assert execution["executor"] == "ray" and os.getpid() not in {int(k.rsplit(":", 1)[1]) for k in procs}
    assert sum(p["units"] for p in procs.values()) == 2 + 3 * 2 + 2 * 1  # train, evaluate, 3x2 gen, 2x1 pool
    # at most one backbone and one judge per worker process, so fewer builds than the 8 model units
    assert all(p["backbones"] <= 1 and p["judges"] <= 1 for p in procs.values()), procs
    assert 1 <= sum(p["backbones"] for p in procs.values()) < 8, procs
    assert all(set(p["gpu_ids"]) <= {"0", "1"} and p["gpu_ids"] for p in procs.values()), procs


def test_worker_killed_mid_round_loses_and_duplicates_nothing(ray_cluster, seeded, local_round, tiny_inputs,
                                                              tmp_path):
    gate, victim = ray_cluster, []

    def kill_then_release():
        try:
            victim.append(gate.kill_first_unit())
        finally:
            gate.release()  # the other units (and the killed one's retry) go on either way

    gate.arm()
    killer = threading.Thread(target=kill_then_release, daemon=True)
    killer.start()
    store, execution = _ray_round(seeded, tiny_inputs, tmp_path, "killed")
    killer.join(timeout=10)
    assert victim, "no unit reached the gate: nothing was killed"
    assert victim[0][1] in {"generate", "judge", "cycle_generated", "cycle_pool"}, victim
    got = _canon(store.read(1, "all"))
    pd.testing.assert_frame_equal(got, local_round)
    assert not got[S.SAMPLE_ID].duplicated().any() and store.verify() == []
    assert sum(p["units"] for p in execution["processes"].values()) == 10  # every unit answered once
    store.gc(grace_s=0)  # the killed unit's partial shards, if any, are debris: gc takes them
    assert store.verify() == []


def test_ray_round_on_s3_equals_local_round(ray_cluster, seeded, local_round, s3_server, tiny_inputs, tmp_path):
    """Workers on the cluster write their units to one bucket at once; the commit is the same."""
    import uuid

    from tests.storage.s3 import BUCKET

    uri, options = f"s3://{BUCKET}/ray-{uuid.uuid4().hex[:8]}/store", s3_server.storage_options
    _upload(seeded, RoundStore(uri, options))
    store, execution = _ray_round(seeded, tiny_inputs, tmp_path, "s3", uri, options)
    pd.testing.assert_frame_equal(_canon(store.read(1, "all")), local_round)
    assert store.verify() == [] and sum(p["units"] for p in execution["processes"].values()) == 10


def test_remote_options_keep_gpu_workers_and_retry_dead_ones(tiny_inputs, tmp_path):
    from layerloop.tasks.runtime.executor import remote_options

    gpu = remote_options(_ray_cfg(str(tmp_path), tiny_inputs))
    assert gpu == {"num_cpus": 1.0, "num_gpus": 1.0, "max_retries": 3, "max_calls": 0}
    cpu = remote_options(_cfg(str(tmp_path), tiny_inputs, executor="ray"))
    assert "max_calls" not in cpu and cpu["num_gpus"] == 0


@pytest.mark.parametrize("gpu_id, visible, index", [(1, None, 1), ("3", "2,3", 1), ("0", " 0 ", 0)])
def test_torch_index_of_a_ray_gpu(gpu_id, visible, index):
    from layerloop.tasks.runtime.placement import torch_index

    assert torch_index(gpu_id, visible) == index


def test_torch_index_refuses_a_gpu_the_node_does_not_show():
    from layerloop.tasks.runtime.placement import torch_index

    with pytest.raises(ValueError, match="not in CUDA_VISIBLE_DEVICES"):
        torch_index("5", "0,1")


def test_config_refuses_credentials_in_the_ray_runtime_env(tiny_inputs, tmp_path):
    from layerloop.tasks.config import ConfigError

    with pytest.raises(ConfigError, match="look like credentials"):
        _cfg(str(tmp_path), tiny_inputs, ray={"runtime_env": {"env_vars": {"AWS_SECRET_ACCESS_KEY": "x"}}})


def test_help_imports_neither_ray_nor_prefect_ray():
    code = ("import sys\nfrom layerloop.flows.cli.main import app\n"
            "for args in (['--help'], ['run', '--help']):\n"
            "    try:\n        app(args)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('ray', 'prefect_ray') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "[]", done.stderr


def test_prefect_yaml_ray_deployment_is_a_ray_config_once_deployed():
    """`prefect deploy` fills {{ $LAYERLOOP_RAY_ADDRESS }}; left unfilled, the run refuses it by name."""
    from pathlib import Path

    import yaml

    from layerloop.tasks.config import ConfigError, validate_config

    text = (Path(__file__).resolve().parents[2] / "prefect.yaml").read_text()
    ray = next(d for d in yaml.safe_load(text)["deployments"] if d["name"] == "ray")
    with pytest.raises(ConfigError, match="LAYERLOOP_RAY_ADDRESS"):
        validate_config(ray["parameters"]["config"])
    filled = yaml.safe_load(text.replace("{{ $LAYERLOOP_RAY_ADDRESS }}", "head:6379"))
    cfg = validate_config(next(d for d in filled["deployments"] if d["name"] == "ray")["parameters"]["config"])
    assert (cfg.loop.executor, cfg.loop.ray.address, cfg.loop.ray.num_gpus) == ("ray", "head:6379", 1)
    assert ray["work_pool"]["job_variables"]["env"]["RAY_AUTH_MODE"] == "token"
