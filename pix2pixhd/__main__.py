"""``python -m pix2pixhd``: the command line."""

import sys

from pix2pixhd.cli import main

sys.exit(main())
