"""`python -m VeloxSegSlicerLib.engine ...` is the `veloxseg` command (engine/cohort/cli.py) without the
console script installed, e.g. in 3D Slicer's own Python."""

import sys

from .cohort.cli import main

if __name__ == "__main__":
    sys.exit(main())
