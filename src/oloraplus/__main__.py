"""`python -m oloraplus` (and `torchrun -m oloraplus`) entry point."""

from oloraplus.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
