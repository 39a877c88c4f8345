"""The `layerloop` command line: main.py builds the typer app, config.py is the one config loader and error
printer every command uses, and data.py, judge.py, run.py, report.py register their areas' commands."""
