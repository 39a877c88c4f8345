"""A real OpenAI-compatible HTTP server on localhost whose answers are scripted, for tests and bench/judge.py.

It speaks `POST /v1/chat/completions` (stdlib ThreadingHTTPServer, one thread per connection) and answers
each request according to a per-sample plan (the `X-Layerloop-Sample` header the judge sends): a list of
behaviours consumed one per attempt, the last repeated (`plans` by sample id, else `planner(sample_id)`
when set, else `default`). Behaviours:

    ok          valid JSON scores (`scores`, on the judge's 1-5 scale by default), or `responder(payload)`
    hold        hold the answer until the test calls `release()` or the server stops (at most `hold_s`,
                far past any client timeout a test sets), then answer ok
    429 / 500 / 503 / 400 / 401 / 404 ...   that HTTP status with an error body (429 carries Retry-After: 0)
    malformed   content that is not JSON
    truncated   JSON cut in the middle, finish_reason "length"
    schema      valid JSON violating the schema (a criterion missing, another out of range)
    whitespace  an opening brace then endless whitespace, finish_reason "length"

With `gate_in_flight=N` the first requests are held until N are in flight at once (then the gate stays
open; at most `hold_s`), so a client allowed N concurrent requests reaches exactly N at the server
whatever the machine's load, instead of by the luck of a latency. It records the peak number of
requests in flight, every request's sample id and Authorization
header (so tests can check the key was sent, and never logged elsewhere). `port` picks the port (0: any
free one), so a test can stop the server (an outage: connection refused) and bring it back at the same URL.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CRITERIA = ("logo_clean", "object_clean", "composite_consistent", "realism")


class ScriptedChatServer:
    """Context manager: `with ScriptedChatServer() as srv: srv.base_url ...`."""

    def __init__(self, *, latency_s: float = 0.0, hold_s: float = 60.0, gate_in_flight: int | None = None,
                 default: str = "ok", scores: dict[str, float] | None = None, port: int = 0):
        self.latency_s, self.hold_s, self.default = latency_s, hold_s, default
        self.gate_in_flight = gate_in_flight
        self.released = threading.Event()  # opens every `hold` answer
        self.gate_open = threading.Event()  # set once `gate_in_flight` requests were in flight at once
        self.scores = dict(scores or {c: 4 for c in CRITERIA})
        self.plans: dict[str, list[str]] = {}
        self.planner = None  # optional callable(sample id) -> plan, for ids without an entry in `plans`
        self.responder = None  # optional callable(request payload) -> content of an "ok" answer
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "ScriptedChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()  # held handlers answer (to a gone client) and end
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.drop_connections()  # as a stopped server does: kept-alive clients must not reach old handlers
        self._thread.join(timeout=5)

    def release(self) -> None:
        """Let every held (`hold`) request answer, now and from now on."""
        self.released.set()

    def attempts(self, sample_id: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r["sample"] == sample_id)

    def _next_behaviour(self, sample_id: str) -> str:
        with self._lock:
            seen = sum(1 for r in self.requests if r["sample"] == sample_id)
            plan = self.plans.get(sample_id) or (self.planner(sample_id) if self.planner else None) or [self.default]
            return plan[min(seen - 1, len(plan) - 1)]

    def _enter(self, record: dict) -> None:
        with self._lock:
            self.requests.append(record)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.gate_in_flight and self.in_flight >= self.gate_in_flight:
                self.gate_open.set()

    def _wait_gate(self) -> None:
        """Hold until `gate_in_flight` requests were in flight at once (open for good after), at most hold_s."""
        if self.gate_in_flight:
            self.gate_open.wait(self.hold_s)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 refuses connections under a burst of concurrency

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._connections: set = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Cut every open connection (the handler threads then end on their own)."""
        with self._connections_lock:
            open_now = list(self._connections)
        for sock in open_now:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _completion(content: str, finish_reason: str = "stop", model: str = "scripted") -> bytes:
    body = {"id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    return json.dumps(body).encode()


def _content_for(server: ScriptedChatServer, behaviour: str, payload: dict) -> tuple[str, str]:
    good = server.responder(payload) if server.responder else json.dumps({**server.scores, "comment": "scripted"})
    if behaviour == "malformed":
        return "Sure! The logo looks clean, I'd say 4 out of 5.", "stop"
    if behaviour == "truncated":
        return good[: len(good) // 2], "length"
    if behaviour == "schema":
        bad = {c: v for c, v in server.scores.items() if c != "realism"}
        bad["logo_clean"] = 17
        return json.dumps(bad), "stop"
    if behaviour == "whitespace":
        return "{" + " \n" * 2000, "length"
    return good, "stop"


def _make_handler(server: ScriptedChatServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: Nagle + delayed ACK would add 40 ms

        def log_message(self, *args) -> None:  # keep test output clean
            return

        def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout); nothing to answer

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/stats":
                return self._send(404, b'{"error": {"message": "not found"}}')
            with server._lock:
                stats = {"requests": len(server.requests), "max_in_flight": server.max_in_flight,
                         "process_cpu_s": time.process_time()}
            self._send(200, json.dumps(stats).encode())

        def do_POST(self) -> None:
            payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, b'{"error": {"message": "not found"}}')
            sample = self.headers.get("X-Layerloop-Sample", "")
            server._enter({"sample": sample, "auth": self.headers.get("Authorization"), "payload": payload})
            try:
                server._wait_gate()
                self._answer(server._next_behaviour(sample), payload)
            finally:
                server._leave()

        def _answer(self, behaviour: str, payload: dict) -> None:
            time.sleep(server.latency_s)
            if behaviour == "hold":
                server.released.wait(server.hold_s)
            if behaviour.isdigit():
                err = json.dumps({"error": {"message": f"scripted {behaviour}", "code": int(behaviour)}}).encode()
                return self._send(int(behaviour), err, {"Retry-After": "0"} if behaviour == "429" else None)
            content, finish = _content_for(server, behaviour, payload)
            self._send(200, _completion(content, finish, payload.get("model", "scripted")))

    return Handler


def main() -> None:
    """Serve in a process of its own (bench/judge.py), so the server's threads do not share the client's GIL."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="scripted OpenAI-compatible chat server")
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    with ScriptedChatServer(latency_s=args.latency) as srv:
        print(srv.base_url, flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin


if __name__ == "__main__":
    main()
