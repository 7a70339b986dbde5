"""Entry point of `python -m hpc`."""

import sys

from hpc.cli import main

if __name__ == "__main__":
    sys.exit(main())
