"""The glue between storage/ and models/, in rooms by role, floor first: config.py (the composed
PipelineConfig), stages/ (the plain stage functions and what they open), recipe.py (the one definition of a
round), reporting/ (reports and summaries), runtime/ (Prefect tasks and artifacts, the plain driver, executors,
the gpu slot and run lock). Imports nothing of flows/."""
