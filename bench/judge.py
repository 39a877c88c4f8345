"""Throughput of the openai judge against a local chat-completions server with a fixed per-request latency.

The server (models/judges/scripted_server.py) runs in its own process. The ideal for concurrency C,
latency L and N requests is ceil(N / C) * L seconds; the printed ratio is ideal / measured (1.0 = the
client adds nothing; goal >= 0.9). A one-item warm-up (imports, first connection) is not timed.
cli_cpu / srv_cpu: CPU seconds the client process (judge) and the server process spent in the timed part:
when one approaches wall_s, that process is the bottleneck.
Run: `python bench/judge.py [--latency 0.2] [--concurrency 1,4,16,32]`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _items(n: int, size: int, prefix: str):
    import numpy as np
    from PIL import Image

    from layerloop.models.judges.base import JudgeItem

    rng = np.random.default_rng(0)
    panel = lambda: Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))  # noqa: E731
    return [JudgeItem(f"{prefix}{i}", {"composite": panel(), "logo": panel(), "object": panel()}) for i in range(n)]


class ServerProcess:
    """The scripted server in a child process; its base URL is the first line it prints."""

    def __init__(self, latency: float):
        self.proc = subprocess.Popen([sys.executable, "-m", "layerloop.models.judges.scripted_server", "--latency",
                                      str(latency)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.base_url = self.proc.stdout.readline().strip()

    def stats(self) -> dict:
        with urllib.request.urlopen(self.base_url.rsplit("/v1", 1)[0] + "/stats") as resp:
            return json.loads(resp.read())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def run(concurrency: int, latency: float, n: int, size: int) -> dict:
    from layerloop.models.judges.config import JudgeConfig
    from layerloop.models.judges.registry import build_judge

    server = ServerProcess(latency)
    try:
        cfg = JudgeConfig(backend="openai", openai={"base_url": server.base_url, "api_key_env": None,
                                                    "concurrency": concurrency, "timeout_s": 30})
        judge = build_judge(cfg)
        judge.score(_items(1, size, "warm"))
        items = _items(n, size, "b")
        server_cpu = server.stats()["process_cpu_s"]
        start, client_cpu = time.perf_counter(), time.process_time()
        results = judge.score(items)
        wall, client_cpu = time.perf_counter() - start, time.process_time() - client_cpu
        judge.close()
        stats = server.stats()
        peak, server_cpu = stats["max_in_flight"], stats["process_cpu_s"] - server_cpu
    finally:
        server.close()
    ideal = math.ceil(n / concurrency) * latency
    return {"concurrency": concurrency, "n": n, "wall_s": wall, "ideal_s": ideal, "ratio": ideal / wall,
            "req_per_s": n / wall, "peak_in_flight": peak, "failed": sum(r.error is not None for r in results),
            "client_cpu_s": client_cpu, "server_cpu_s": server_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, default=0.2, help="server latency per request (s)")
    parser.add_argument("--concurrency", default="1,4,16,32", help="comma-separated concurrency levels")
    parser.add_argument("--rounds", type=int, default=6, help="requests per concurrency slot")
    parser.add_argument("--size", type=int, default=64, help="panel side in pixels (PNG-encoded per request)")
    args = parser.parse_args()
    print(f"openai judge vs local server: latency {args.latency:.3f}s, panels {args.size}px, "
          f"{args.rounds} requests per slot, {os.cpu_count()} CPUs")
    print(f"{'conc':>5} {'n':>5} {'wall_s':>8} {'ideal_s':>8} {'ratio':>6} {'req/s':>7} {'peak':>5} {'failed':>6} {'cli_cpu':>7} {'srv_cpu':>7}")
    for c in (int(x) for x in args.concurrency.split(",")):
        r = run(c, args.latency, c * args.rounds, args.size)
        print(f"{r['concurrency']:>5} {r['n']:>5} {r['wall_s']:>8.3f} {r['ideal_s']:>8.3f} {r['ratio']:>6.3f} "
              f"{r['req_per_s']:>7.1f} {r['peak_in_flight']:>5} {r['failed']:>6} "
              f"{r['client_cpu_s']:>7.2f} {r['server_cpu_s']:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
