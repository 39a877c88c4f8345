"""Integration tier: tests that start real services (PostgreSQL, a Prefect server, workers)."""
