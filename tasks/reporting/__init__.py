"""What a round shows people, as files and rows: its report (report.py: HTML, JSON, plots) and its summary
and selection-rate rows (summary.py). Publishing them to Prefect is the runtime's (runtime/publish.py)."""
