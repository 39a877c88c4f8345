"""Child process of the server-restart fault test (run as a script, never imported by pytest).

  gpu_holder.py CONFIG STOPFILE   enter gpu_slot(cfg): print HELD, hold until STOPFILE exists, print RELEASED;
                                  then enter gpu_slot again (the next round's GPU stage): print AGAIN
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main(config: str, stop: str) -> None:
    from layerloop.tasks.config import PipelineConfig
    from layerloop.tasks.runtime.gpu_slot import ensure_gpu_slot, gpu_slot

    cfg = PipelineConfig.model_validate(json.loads(config))
    ensure_gpu_slot(cfg)
    with gpu_slot(cfg):
        print("HELD", flush=True)
        deadline = time.monotonic() + 300
        while not os.path.exists(stop) and time.monotonic() < deadline:
            time.sleep(0.2)
    print("RELEASED", flush=True)
    with gpu_slot(cfg):
        print("AGAIN", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
