"""`python -m fastssl.train`: the entry point; the command line lives in :mod:`fastssl.cli.train`."""

from fastssl.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
