"""``python -m graphlrp``: the command line interface of :mod:`graphlrp.cli`."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
