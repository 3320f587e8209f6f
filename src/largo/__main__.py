"""`python -m largo` (and `torchrun -m largo`) enter the CLI."""

from largo.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
