"""Real services for the integration tier: a throwaway PostgreSQL, a Prefect server on it, workers.

Plain classes (context managers) so the pytest fixtures, CI scripts and a developer's shell can
all use them. Every process is started in its own session and stopped by process group on exit,
also when the code inside the `with` block fails. The constants at the top are the single source
for the names docker-compose.yml must use too (tests/integration/test_compose.py checks that).
"""
from __future__ import annotations

import glob
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# Names shared with docker-compose.yml (checked by test_compose.py, so the two cannot drift).
PG_USER = "postgres"
PG_DATABASE = "prefect"
PREFECT_PORT = 4200  # compose publishes the server here; the harness picks a free port instead
WORK_POOL = "layerloop"
WORK_POOL_TYPE = "process"
ENV_DB_URL = "PREFECT_SERVER_DATABASE_CONNECTION_URL"
ENV_API_URL = "PREFECT_API_URL"
ENV_UI_API_URL = "PREFECT_UI_API_URL"
ENV_ANALYTICS = "PREFECT_SERVER_ANALYTICS_ENABLED"
ENV_HOME = "PREFECT_HOME"
ENV_PG_BIN = "LAYERLOOP_PG_BIN"  # override where PostgreSQL's initdb/pg_ctl live
DB_DRIVER = "postgresql+asyncpg"

SERVER_START_TIMEOUT_S = 240.0  # ~16 s on an idle machine; the CI box is shared by many jobs
STOP_GRACE_S = 15.0


class ServiceError(RuntimeError):
    """A service could not be started or stopped; the message says what to fix and where the log is."""


def db_url(host: str, port: int, *, password: str | None = None, database: str = PG_DATABASE) -> str:
    """The SQLAlchemy URL Prefect's server takes, in the same form the compose file uses."""
    auth = PG_USER if password is None else f"{PG_USER}:{password}"
    return f"{DB_DRIVER}://{auth}@{host}:{port}/{database}"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (chosen at run time so parallel runs don't collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_pg_bin() -> Path:
    """The newest PostgreSQL server bin dir (Debian layout), or $LAYERLOOP_PG_BIN."""
    override = os.environ.get(ENV_PG_BIN)
    candidates = [override] if override else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key)
    for cand in reversed(candidates):
        if cand and (Path(cand) / "initdb").exists() and (Path(cand) / "pg_ctl").exists():
            return Path(cand)
    raise ServiceError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin: "
        f"run `make system-deps` (installs Debian's postgresql) or set {ENV_PG_BIN} to their directory")


def _version_key(bin_dir: str) -> int:
    name = Path(bin_dir).parent.name
    return int(name) if name.isdigit() else -1


def _log_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop_group(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group, SIGKILL it if it outlives the grace period."""
    if proc.poll() is not None:
        _kill_group(proc.pid, signal.SIGKILL)  # children may outlive their leader
        return
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)
    _kill_group(proc.pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


class _Service:
    """Context-manager protocol shared by the servers: a failed start still stops what it began."""

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class PostgresServer(_Service):
    """A private PostgreSQL cluster on 127.0.0.1:<port>, trust auth, with the `prefect` database.

    initdb refuses to run as root, so as root every server command runs as the `postgres` user
    (`su postgres -c ...`) on a data dir that user owns.
    """

    def __init__(self, base_dir: str | os.PathLike, port: int | None = None):
        self.port = port or free_port()
        self.bin = find_pg_bin()
        # As root the cluster lives in its own /tmp dir the postgres user can reach: pytest's
        # tmp dirs (and most callers') are 0700 root, which initdb cannot even enter.
        self._own_dir = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="layerloop-pg-")) if self._own_dir else Path(base_dir)
        self.data = self.base / "pgdata"
        self.sock = self.base / "pgsock"
        self.log = self.base / "postgres.log"
        self._started = False

    @property
    def url(self) -> str:
        return db_url("127.0.0.1", self.port)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["su", PG_USER, "-s", "/bin/sh", "-c", shlex.join(cmd)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if check and res.returncode != 0:
            raise ServiceError(f"{args[0]} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}\n"
                               f"server log {self.log}:\n{_log_tail(self.log)}")
        return res

    def _prepare_dirs(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)  # the postgres user must reach its dirs inside our temp dir
        for d in (self.data, self.sock):
            d.mkdir(exist_ok=True)
        self.log.touch()
        if os.geteuid() == 0:
            for p in (self.data, self.sock, self.log):
                shutil.chown(p, PG_USER, PG_USER)
        os.chmod(self.data, 0o700)

    def start(self) -> None:
        self._prepare_dirs()
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", PG_USER, "-E", "UTF8")
        self._started = True
        self._pg_start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, PG_DATABASE)

    def _pg_start(self) -> None:
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "-t", "120", "start")

    def crash(self) -> None:
        """Stop the server as a crash would (`-m immediate`: every backend killed, no checkpoint; the next
        start recovers from the WAL). Clients see their connections cut and new ones refused."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")

    def start_again(self) -> None:
        """Start the stopped server on the same data dir and port (crash recovery first)."""
        self._pg_start()

    def stop(self) -> None:
        if not self._started:
            if self._own_dir:
                shutil.rmtree(self.base, ignore_errors=True)
            return
        res = self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", check=False)
        if res.returncode != 0:
            self._kill_postmaster()
        self._started = False
        if self._own_dir:
            shutil.rmtree(self.base, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        """Last resort when pg_ctl cannot stop it: the postmaster's pid is line 1 of postmaster.pid."""
        pidfile = self.data / "postmaster.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass


class PrefectServer(_Service):
    """`prefect server start` against a database URL, on a free port, with its own PREFECT_HOME."""

    def __init__(self, base_dir: str | os.PathLike, database_url: str, port: int | None = None,
                 *, ui: bool = True, timeout_s: float = SERVER_START_TIMEOUT_S):
        self.base = Path(base_dir)
        self.db_url = database_url
        self.port = port or free_port()
        self.ui = ui
        self.timeout_s = timeout_s
        self.log = self.base / "prefect-server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def env(self) -> dict[str, str]:
        """The environment a CLI subprocess (prefect, layerloop, a worker) needs to use this server."""
        env = dict(os.environ)
        env.update({
            ENV_API_URL: self.api_url,
            ENV_UI_API_URL: self.api_url,
            ENV_ANALYTICS: "false",
            ENV_HOME: str(self.base / "prefect-home"),
        })
        return env

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        env = self.env
        env[ENV_DB_URL] = self.db_url
        env["PREFECT_SERVER_UI_ENABLED"] = "true" if self.ui else "false"
        cmd = [_prefect_exe(), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.wait_healthy()

    def wait_healthy(self) -> None:
        """Poll /api/health until it answers 200; fail early (with the log) if the server died."""
        import httpx

        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(f"prefect server exited with {self.proc.returncode}; log {self.log}:\n"
                                   f"{_log_tail(self.log)}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ServiceError(f"prefect server did not answer {self.api_url}/health within {self.timeout_s:.0f} s; "
                           f"log {self.log}:\n{_log_tail(self.log)}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
            self.proc = None


def _prefect_exe() -> str:
    """The `prefect` next to the running interpreter (the venv's), else the one on PATH."""
    import sys

    local = Path(sys.executable).with_name("prefect")
    found = str(local) if local.exists() else shutil.which("prefect")
    if not found:
        raise ServiceError("the `prefect` command was not found: install the project (`make test` does)")
    return found


def prefect_cli(env: dict[str, str], *args: str, timeout: float = 180.0) -> str:
    """Run one `prefect ...` command against a server; returns stdout, raises with its output on failure."""
    res = subprocess.run([_prefect_exe(), *args], env=env, capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise ServiceError(f"`prefect {' '.join(args)}` failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res.stdout


class PrefectWorker:
    """`prefect worker start --pool NAME` against a server; stopped by process group on exit."""

    def __init__(self, env: dict[str, str], pool: str = WORK_POOL, *, log: str | os.PathLike | None = None,
                 cwd: str | os.PathLike | None = None, worker_type: str = WORK_POOL_TYPE):
        if ENV_API_URL not in env:
            raise ServiceError(f"a worker needs {ENV_API_URL} in its env: pass PrefectServer.env")
        self.env, self.pool, self.cwd, self.type = env, pool, cwd, worker_type
        self.log = Path(log) if log else Path(tempfile.mkstemp(prefix="prefect-worker-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "PrefectWorker":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        cmd = [_prefect_exe(), "worker", "start", "--pool", self.pool, "--type", self.type]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_registered(self, timeout_s: float = 120.0) -> None:
        """Block until the server lists a worker on this pool (it has polled at least once)."""
        import httpx

        url = f"{self.env[ENV_API_URL]}/work_pools/{self.pool}/workers/filter"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(f"worker exited with {self.proc.returncode}; log {self.log}:\n{_log_tail(self.log)}")
            try:
                r = httpx.post(url, json={}, timeout=5.0)
                if r.status_code == 200 and r.json():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise ServiceError(f"no worker registered on pool {self.pool!r} within {timeout_s:.0f} s; log {self.log}:\n"
                           f"{_log_tail(self.log)}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
            self.proc = None


class PrefectStack:
    """PostgreSQL + a Prefect server on it: `.api_url`, `.db_url`, `.env` for CLI subprocesses."""

    def __init__(self, base_dir: str | os.PathLike | None = None, *, ui: bool = True):
        self._own_dir = base_dir is None
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="layerloop-services-"))
        self.ui = ui
        self.postgres: PostgresServer | None = None
        self.server: PrefectServer | None = None

    @property
    def api_url(self) -> str:
        return self.server.api_url

    @property
    def db_url(self) -> str:
        return self.postgres.url

    @property
    def env(self) -> dict[str, str]:
        return self.server.env

    def __enter__(self) -> "PrefectStack":
        try:
            self.postgres = PostgresServer(self.base).__enter__()
            self.server = PrefectServer(self.base, self.postgres.url, ui=self.ui).__enter__()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.server is not None:
                self.server.stop()
        finally:
            if self.postgres is not None:
                self.postgres.stop()
            if self._own_dir:
                shutil.rmtree(self.base, ignore_errors=True)

    def worker(self, pool: str = WORK_POOL, **kw) -> PrefectWorker:
        return PrefectWorker(self.env, pool, log=self.base / f"worker-{pool}.log", **kw)
