"""``python -m remote_sandbox serve ...``: the sandbox host's command line."""

import sys

from remote_sandbox.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
