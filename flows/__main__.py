"""`python -m layerloop.flows ...` = the `layerloop` command (handy where the console script is not on PATH)."""
from .cli.main import main

if __name__ == "__main__":
    main()
