"""An S3 server that can be stopped and started again on its port with its data (run as a script).

  moto_ctl.py PORT      serve moto's S3 on 127.0.0.1:PORT, print `READY`, then obey stdin line by line:
                        `stop`  -> close the listening socket (new connections are refused), print STOPPED
                        `start` -> listen on the same port again, print STARTED
                        EOF     -> exit

moto's `moto_server` keeps its buckets in memory and loses them when its process ends, so a restarted
moto_server would come back empty. Here the server stops and starts inside one process: moto's backends
(the objects) live in that process, so the server returns with the same data, the way a real S3 endpoint
comes back after an outage. Each response closes its connection (HTTP/1.0): a stopped server then
serves nobody, where werkzeug's keep-alive threads would keep answering clients that connected before.
"""
from __future__ import annotations

import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import MotoRequestHandler
from werkzeug.serving import make_server


class _OneRequestPerConnection(MotoRequestHandler):
    protocol_version = "HTTP/1.0"  # set here, so werkzeug does not switch the handler to keep-alive


class Server:
    """moto's S3 app under werkzeug on one port; `start` / `stop` any number of times."""

    def __init__(self, port: int):
        self.port = port
        self.app = DomainDispatcherApplication(create_backend_app)  # one app: its backends hold the data
        self.server = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.server = make_server("127.0.0.1", self.port, self.app, threaded=True,
                                  request_handler=_OneRequestPerConnection)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()  # shutdown() alone leaves the socket listening: connects would hang, not fail
        self.thread.join()


def main(port: str) -> None:
    server = Server(int(port))
    server.start()
    print("READY", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "stop":
            server.stop()
            print("STOPPED", flush=True)
        elif command == "start":
            server.start()
            print("STARTED", flush=True)
        else:
            print(f"UNKNOWN {command}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
