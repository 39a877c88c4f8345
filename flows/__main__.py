"""`python -m flows ...` = the `layerloop` command (handy where the console script is not on PATH)."""
from flows.cli import main

if __name__ == "__main__":
    main()
