"""`python -m session ...` runs `tether sessions ...`."""

import sys

from session.cli import main

sys.exit(main(sys.argv[1:]))
