"""docker-compose.yml and the Dockerfile, checked statically (Docker does not run on our machines).

The names the compose file must share with the stack CI really starts (database, user, env vars,
URL form, work pool) come from tests/integration/services.py and prefect.yaml, so neither can
drift from the other without this test failing.
"""
from __future__ import annotations

import os
import re
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from . import services as svc

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("postgres", "prefect-server", "prefect-services", "minio", "minio-setup", "deploy", "worker",
            "ray-head", "ray-node")
PG_PASSWORD = "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _env(service: dict) -> dict:
    env = service.get("environment", {})
    if not isinstance(env, dict):
        raise ValueError("use the mapping form for environment (the merges below rely on it)")
    return env


def test_every_service_is_present(services):
    assert set(SERVICES) <= set(services), set(SERVICES) - set(services)


@pytest.mark.parametrize("name", ["postgres", "prefect-server", "minio"])
def test_long_running_services_have_health_checks(services, name):
    hc = services[name]["healthcheck"]
    assert hc["test"] and hc["retries"] >= 3 and hc["interval"]


def test_postgres_matches_the_harness(services):
    pg = services["postgres"]
    env = _env(pg)
    assert env["POSTGRES_USER"] == svc.PG_USER and env["POSTGRES_DB"] == svc.PG_DATABASE
    check = " ".join(pg["healthcheck"]["test"])
    assert "pg_isready" in check and f"-U {svc.PG_USER}" in check and f"-d {svc.PG_DATABASE}" in check
    assert pg["image"].startswith("postgres:")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])


def test_prefect_server_uses_postgres_like_the_harness(services):
    server = services["prefect-server"]
    env = _env(server)
    assert env[svc.ENV_DB_URL] == svc.db_url("postgres", 5432, password=PG_PASSWORD)
    assert env[svc.ENV_ANALYTICS] == "false"
    assert f"localhost:{svc.PREFECT_PORT}/api" in env[svc.ENV_UI_API_URL]  # the browser's view, not the network's
    assert f"{svc.PREFECT_PORT}:{svc.PREFECT_PORT}" in server["ports"]
    assert "--no-services" in server["command"] and str(svc.PREFECT_PORT) in server["command"]
    assert f":{svc.PREFECT_PORT}/api/health" in " ".join(server["healthcheck"]["test"])
    services_env = _env(services["prefect-services"])
    assert services_env[svc.ENV_DB_URL] == env[svc.ENV_DB_URL]
    assert services["prefect-services"]["command"][-3:] == ["server", "services", "start"]


def test_prefect_images_match_the_installed_prefect(services):
    for name in ("prefect-server", "prefect-services"):
        tag = services[name]["image"].split(":", 1)[1]
        assert tag.startswith(version("prefect") + "-python3.11"), (name, tag)


def test_harness_settings_all_appear_in_compose(services, tmp_path):
    """Every Prefect setting the harness really sets is set in compose (server side or client side)."""
    server = svc.PrefectServer(tmp_path, svc.db_url("127.0.0.1", 5432))
    harness = {k for k, v in server.env.items() if os.environ.get(k) != v} | {svc.ENV_DB_URL}
    in_compose = set()
    for s in services.values():
        in_compose |= set(_env(s))
    assert harness <= in_compose, harness - in_compose


@pytest.mark.parametrize(
    "name, dep, condition",
    [
        ("prefect-server", "postgres", "service_healthy"),
        ("prefect-services", "postgres", "service_healthy"),
        ("prefect-services", "prefect-server", "service_healthy"),
        ("minio-setup", "minio", "service_healthy"),
        ("deploy", "prefect-server", "service_healthy"),
        ("worker", "prefect-server", "service_healthy"),
        ("worker", "deploy", "service_completed_successfully"),
        ("worker", "minio-setup", "service_completed_successfully"),
    ],
)
def test_start_order_waits_for_readiness(services, name, dep, condition):
    assert services[name]["depends_on"][dep]["condition"] == condition


def test_worker_runs_the_deployments_pool(services):
    worker = services["worker"]
    cmd = worker["command"]
    assert cmd[cmd.index("--pool") + 1] == svc.WORK_POOL and cmd[cmd.index("--type") + 1] == svc.WORK_POOL_TYPE
    assert _env(worker)[svc.ENV_API_URL] == f"http://prefect-server:{svc.PREFECT_PORT}/api"
    assert worker["image"] == services["deploy"]["image"] and services["deploy"]["build"] == "."
    deploy_cmd = " ".join(services["deploy"]["command"])
    assert f"work-pool create {svc.WORK_POOL} --type {svc.WORK_POOL_TYPE}" in deploy_cmd
    assert "deploy --all" in deploy_cmd
    prefect_yaml = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in prefect_yaml["deployments"]}
    assert pools == {svc.WORK_POOL}, pools


def test_minio_bucket_is_created_and_store_env_reaches_the_worker(services):
    setup = " ".join(services["minio-setup"]["command"])
    assert "mc mb --ignore-existing" in setup and "http://minio:9000" in setup
    env = _env(services["worker"])
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000" == env["FSSPEC_S3_ENDPOINT_URL"]
    assert {"9000:9000", "9001:9001"} <= set(services["minio"]["ports"])


def test_secrets_come_from_the_environment(services):
    for name, s in services.items():
        for key, value in _env(s).items():
            if re.search(r"PASSWORD|SECRET", key):
                assert str(value).startswith("${"), f"{name}.{key} must be interpolated from the env"
        assert "PASSWORD" not in str(s.get("command", "")).replace("$$MINIO_ROOT_PASSWORD", "")


def test_named_volumes_are_declared(compose, services):
    used = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith((".", "/"))}
    assert used and used <= set(compose["volumes"]), used - set(compose["volumes"])


def test_dockerfile_installs_cpu_torch_pin_before_the_project():
    text = (ROOT / "Dockerfile").read_text()
    code = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert code[0] == "FROM python:3.11-slim"
    make_pin = re.search(r"TORCH_CPU_PIN \?= (\S+)", (ROOT / "Makefile").read_text()).group(1)
    assert f"ARG TORCH_CPU_PIN={make_pin}" in text  # same pin as the Makefile
    assert text.index('"$TORCH_CPU_PIN"') < text.index("pip install -e")
    for pkg in ("layerloop", "flows", "tasks", "models", "storage"):
        assert f"COPY {pkg} ./{pkg}" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env"} <= set(ignored)


def test_object_store_images_are_pinned(services):
    """MinIO publishes no new images (its repository is unmaintained): `latest` would never move, so the
    compose file names one release, and says why it keeps MinIO (docker-compose.yml's head comment)."""
    for name in ("minio", "minio-setup"):
        image = services[name]["image"]
        assert ":RELEASE." in image and not image.endswith(":latest"), (name, image)


def test_ray_profile_is_opt_in_and_authenticated(services):
    for name in ("ray-head", "ray-node"):
        assert services[name]["profiles"] == ["ray"] and services[name]["image"] == services["worker"]["image"]
        assert _env(services[name])["FSSPEC_S3_ENDPOINT_URL"] == "http://minio:9000"  # units write to the bucket
    assert "--head" in services["ray-head"]["command"] and "ray-head:6379" in services["ray-node"]["command"]
    assert services["ray-node"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert "ray-head" not in services["worker"].get("depends_on", {})  # the local executor needs no Ray
    worker = _env(services["worker"])
    assert worker["RAY_AUTH_MODE"] == "token" and worker["RAY_AUTH_TOKEN"].startswith("${")
    prefect_yaml = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    ray = next(d for d in prefect_yaml["deployments"] if d["name"] == "ray")
    assert ray["parameters"]["config"]["loop"]["executor"] == "ray"
    assert ray["parameters"]["config"]["store"]["uri"].startswith("s3://")
    assert worker["LAYERLOOP_RAY_ADDRESS"] == "ray-head:6379"  # what the deployment's address resolves to


def test_concurrency_leases_survive_a_server_restart_and_reach_the_reaper(services):
    """The gpu slot's leases: on disk (not the API's memory) and on one volume the API and services share."""
    for name in ("prefect-server", "prefect-services"):
        env = _env(services[name])
        assert env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] == "prefect.server.concurrency.lease_storage.filesystem"
        mounts = dict(v.split(":", 1) for v in services[name].get("volumes", []))
        assert mounts.get("prefectleases") == f"{env['PREFECT_HOME']}/concurrency_leases", name
