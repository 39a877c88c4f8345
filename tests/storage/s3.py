"""Real S3 servers for the store tests: `moto_server` over HTTP on 127.0.0.1, and a small forwarding proxy
in front of it that answers conditional PUTs the way MinIO and AWS do where moto answers differently.

`MotoServer` is what the store suite runs against (`s3://` with dummy credentials from the environment).
`AnswerProxy` forwards every request to moto unchanged except the answer to a conditional PUT
(If-None-Match: *): mode "minio" strips the Condition field from a 412 (MinIO's form, from its sources),
mode "aws409" answers the first N such PUTs with 409 ConditionalRequestConflict (AWS's "a conflicting
write is in flight") before letting them through.
"""
from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BUCKET = "layerloop-test"  # the session bucket of tests/conftest.py `s3_server`
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
MINIO_412 = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PreconditionFailed</Code><Message>At least one '
             b'of the pre-conditions you specified did not hold</Message><Key>{key}</Key><RequestId>proxy</RequestId>'
             b'<HostId>proxy</HostId></Error>')
AWS_409 = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ConditionalRequestConflict</Code><Message>A '
           b'conflicting conditional operation is currently in progress against this resource. Please try again.'
           b'</Message><RequestId>proxy</RequestId><HostId>proxy</HostId></Error>')


class ServerError(RuntimeError):
    """A test server did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """`moto_server -H 127.0.0.1 -p PORT` as a context manager; `.url`, `.env` (for child processes) and
    `.storage_options` (for this one: fsspec read its env before the server existed)."""

    def __init__(self, log_dir: Path):
        self.port, self.log = free_port(), Path(log_dir) / "moto.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "FSSPEC_S3_ENDPOINT_URL": self.url, "AWS_ENDPOINT_URL_S3": self.url}

    @property
    def storage_options(self) -> dict:
        return {"endpoint_url": self.url}

    def __enter__(self) -> "MotoServer":
        exe = Path(sys.executable).with_name("moto_server")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(60.0)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"moto_server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2).read()
                return
            except OSError:
                time.sleep(0.2)
        self.__exit__(None, None, None)
        raise ServerError(f"moto_server not ready on {self.url} after {timeout_s:.0f} s")

    def __exit__(self, *exc) -> None:
        stop_group(self.proc)

    def make_bucket(self, name: str) -> None:
        import s3fs

        s3fs.S3FileSystem(endpoint_url=self.url, skip_instance_cache=True).mkdir(name)


class AnswerProxy:
    """HTTP proxy to `upstream` that rewrites conditional-PUT answers (see the module docstring)."""

    def __init__(self, upstream: str, mode: str, conflicts: int = 0):
        if mode not in ("minio", "aws409"):
            raise ValueError(f"mode must be minio or aws409, got {mode!r}")
        self.upstream = upstream.removeprefix("http://")
        self.mode, self.conflicts_left, self.served_409 = mode, conflicts, 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "AnswerProxy":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def take_conflict(self) -> bool:
        """True while this proxy still owes a 409 (aws409 mode)."""
        with self.lock:
            if self.mode != "aws409" or self.conflicts_left <= 0:
                return False
            self.conflicts_left -= 1
            self.served_409 += 1
            return True

    def forward(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = b""
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                handler.rfile.readline()
                return out
            out += handler.rfile.read(size)
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def _handler(proxy: AnswerProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: pytest shows failures, not every request
            pass

        def _answer(self, status: int, headers: list, body: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                if key.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _any(self) -> None:
            body = _read_body(self)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
            headers["Content-Length"] = str(len(body))
            conditional = self.command == "PUT" and self.headers.get("If-None-Match") == "*"
            if conditional and proxy.take_conflict():
                self._answer(409, [("Content-Type", "application/xml")], AWS_409)
                return
            status, out_headers, out = proxy.forward(self.command, self.path, headers, body)
            if conditional and status == 412 and proxy.mode == "minio":
                out = MINIO_412.replace(b"{key}", self.path.encode())
            self._answer(status, out_headers, out if self.command != "HEAD" else b"")

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    return Handler


class StoppableS3:
    """tests/storage/moto_ctl.py as a context manager: an S3 server on one port that `stop()` takes away
    (connections refused) and `start()` brings back on the same port with the same buckets and objects;
    `freeze()` / `thaw()` make it a server that hangs (accepts, never answers) and then answers again."""

    def __init__(self, log_dir: Path):
        self.port, self.log = free_port(), Path(log_dir) / "moto-ctl.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    env = MotoServer.env
    storage_options = MotoServer.storage_options

    def __enter__(self) -> "StoppableS3":
        script = str(Path(__file__).with_name("moto_ctl.py"))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, script, str(self.port)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        self._expect("READY")
        return self

    def _expect(self, word: str) -> None:
        line = self.proc.stdout.readline().strip()
        if line != word:
            self.__exit__(None, None, None)
            raise ServerError(f"moto_ctl said {line!r}, not {word}: {self.log.read_text()[-2000:]}")

    def _say(self, command: str, answer: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        self._expect(answer)

    def stop(self) -> None:
        self._say("stop", "STOPPED")

    def start(self) -> None:
        self._say("start", "STARTED")

    def freeze(self) -> None:
        """SIGSTOP the server: connections are still accepted (the kernel's backlog), nothing is answered."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def __exit__(self, *exc) -> None:
        stop_group(self.proc)

    make_bucket = MotoServer.make_bucket


def stop_group(proc: "subprocess.Popen | None") -> None:
    """End a server started in its own session: SIGTERM to its group, SIGKILL after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGCONT)  # a frozen server would not see the SIGTERM
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
