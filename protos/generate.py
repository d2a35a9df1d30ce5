"""Generate poolclient's Python stubs from the .proto files here (`make protos`).

protoc names generated modules after the .proto paths (poolserve/v1/pooling_pb2.py), and
grpc's generated code imports its messages by that absolute name (`from poolserve.v1 import
...`), which would resolve to the *server* package `poolserve`.  The stubs live inside
poolclient/_proto/ instead, so those imports are rewritten to relative ones.  The test suite
runs this script into a temporary folder and compares, so committed stubs cannot drift.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "client" / "poolclient" / "_proto"


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc  # dev/test dependency only
    import grpc_tools

    protos = sorted(p.relative_to(HERE).as_posix() for p in HERE.rglob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")  # google/protobuf/*.proto
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{HERE}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for path in sorted(out.rglob("*.py*")):
        if path.suffix not in (".py", ".pyi"):
            continue
        text = path.read_text()
        # `from poolserve.v1 import pooling_pb2 as ...` -> `from . import pooling_pb2 as ...`
        fixed = re.sub(r"^from poolserve\.v1 import ", "from . import ", text, flags=re.M)
        if fixed != text:
            path.write_text(fixed)
        written.append(path)
    for folder in {p.parent for p in written} | {out / "poolserve"}:
        while folder != out.parent and folder.is_dir():
            (folder / "__init__.py").touch()
            if folder == out:
                break
            folder = folder.parent
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
