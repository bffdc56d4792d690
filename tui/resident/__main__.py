"""``python -m tui.resident serve ...``: the resident process, as a client starts it."""

import sys

from tui.resident.server import main

sys.exit(main(sys.argv[1:]))
