"""The glue between storage/ and models/: the composed config (config.py), the plain stage functions
(stages/), their Prefect task wrappers (prefect_tasks.py), the gpu slot, Prefect artifacts (publish.py),
reports, human review and adapter files. Imports nothing of flows/."""
