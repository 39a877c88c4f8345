"""How and where a round's stages execute: the Prefect tasks of the stages (prefect_tasks.py) and
the runner that executes the recipe with them (runner.py), the plain driver
without Prefect (driver.py), local or Ray execution (executor.py, placement.py), the strict `gpu` slot
(gpu_slot.py), the store's run lock (run_lock.py), credentials from Secret blocks (secrets.py), the
Prefect artifacts a run publishes (publish.py) and riding out a Prefect API whose database restarts
(orchestration.py)."""
