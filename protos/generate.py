"""Generate poolclient's Python stubs from the .proto files here (`make protos`).

Two packages: the native API (poolserve/v1/) and the Open Inference Protocol (inference/).

protoc names generated modules after the .proto paths (poolserve/v1/pooling_pb2.py), and
grpc's generated code imports its messages by that absolute name (`from poolserve.v1 import
...`), which would resolve to the *server* package `poolserve`.  The stubs live inside
poolclient/_proto/ instead, so those imports are rewritten to relative ones.  The test suite
runs this script into a temporary folder and compares, so committed stubs cannot drift.

The inference stubs also get their own descriptor pool (inference/_pool.py) instead of
protobuf's default one: tritonclient registers the same fully-qualified names
(inference.ModelInferRequest, ...) there, and a pool refuses a second definition of a name
("duplicate symbol"), so without it no process could import both tritonclient and poolserve --
the test suite does, and so may a user's client.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "client" / "poolclient" / "_proto"
# Packages whose generated absolute imports become relative ones.
PACKAGES = ("poolserve.v1", "inference")
PRIVATE_POOL = "inference"  # the package whose stubs get their own descriptor pool
POOL_MODULE = '''"""The descriptor pool of poolclient's inference stubs (written by protos/generate.py).

Not protobuf's default pool: tritonclient defines the same names there (see protos/generate.py).
"""
from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''


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
        packages = "|".join(re.escape(p) for p in PACKAGES)
        fixed = re.sub(rf"^from (?:{packages}) import ", "from . import ", text, flags=re.M)
        if path.parent == out / PRIVATE_POOL and path.suffix == ".py":
            fixed = _use_private_pool(fixed)
        if fixed != text:
            path.write_text(fixed)
        written.append(path)
    if (out / PRIVATE_POOL).is_dir():
        pool = out / PRIVATE_POOL / "_pool.py"
        pool.write_text(POOL_MODULE)
        written.append(pool)
    for folder in {p.parent for p in written} | {out / "poolserve"}:
        while folder != out.parent and folder.is_dir():
            (folder / "__init__.py").touch()
            if folder == out:
                break
            folder = folder.parent
    return written


def _use_private_pool(text: str) -> str:
    """Register a generated module's descriptors in _pool.POOL instead of the default pool."""
    if "_descriptor_pool.Default()" not in text:
        return text  # e.g. a *_pb2_grpc.py
    text = text.replace("_descriptor_pool.Default()", "_pool.POOL")
    return text.replace("# @@protoc_insertion_point(imports)",
                        "from . import _pool\n# @@protoc_insertion_point(imports)", 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
