"""Regenerate the committed gRPC code from the .proto files.

Run as ``python -m protos.generate`` (or with ``--out DIR`` to write
elsewhere, as the drift test does). The generated modules import each other
package-relatively, so they work wherever ``protos`` is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = ["tether/sandbox/v1/sandbox.proto"]


def generate(out: Path) -> list[Path]:
    """Run protoc on every proto file into ``out``; return the files written."""
    from grpc_tools import protoc  # grpcio-tools is a build-time dependency only

    out.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--pyi_out={out}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for proto in PROTO_FILES:
        stem = Path(proto).with_suffix("")
        for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"):
            path = out / f"{stem}{suffix}"
            _make_imports_relative(path)
            written.append(path)
    return written


def _make_imports_relative(path: Path) -> None:
    """Rewrite ``from tether.sandbox.v1 import x_pb2`` to ``from . import x_pb2``."""
    text = path.read_text()
    text = re.sub(r"^from tether\.sandbox\.v1 import ", "from . import ", text, flags=re.M)
    text = re.sub(r"^import tether\.sandbox\.v1\.(\w+) as", r"from . import \1 as", text, flags=re.M)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: regenerate into this package, or into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
