"""`python -m fastssl.eval`: the entry point; the command line lives in :mod:`fastssl.cli.eval`."""

from fastssl.cli.eval import main

if __name__ == "__main__":
    raise SystemExit(main())
