"""Plain stage functions of the self-improving loop: the real work, callable and testable without Prefect.

One module per step of the recipe, each wrapped by one Prefect task in tasks/runtime/prefect_tasks.py:
ingest.py (round 0: seeds and pool), adapter.py (train and evaluate the LoRA), generation.py (tau_G
candidates), judging.py (scores), consistency.py (cycle errors; pool composites decomposed into new
triplets), commit.py (decide and commit the round), summary.py (its report and selection-rate row).
handles.py holds what they all open: the store, the round's writer, the shared backbone, a unit of work.

Round semantics (kept exactly so the store's lineage is readable):
- `adapters/round-NNNN` is the LoRA trained on `training_view(up_to=N)`;
- round r's samples are made with adapter r-1, so round r names parent_round r-1, adapter_id "round-(r-1)".

Every stage works on one unit (a batch of prompts or pool composites), takes and returns JSON-able values
(ids, URIs, counts, seconds), and skips work whose output already sits in the store, so a rerun after a
kill -9 continues from the last finished unit and a committed round is never rewritten.
"""
