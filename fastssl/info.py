"""`python -m fastssl.info`: the entry point; the command line lives in :mod:`fastssl.cli.info`."""

from fastssl.cli.info import main

if __name__ == "__main__":
    raise SystemExit(main())
