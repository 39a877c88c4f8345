"""Prefect tasks: thin typed wrappers that read from storage/, call models/ and write back to storage/."""
