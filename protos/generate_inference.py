"""Generate poolclient's stubs for the Open Inference Protocol (protos/inference/*.proto).

Temporary: folded into protos/generate.py (`make protos`) once the native API's generator is
on this branch.  Two rewrites of protoc's output, both needed because the stubs live inside
poolclient/_proto/inference/ rather than at a top-level `inference` package:

* `from inference import x_pb2` -> `from . import x_pb2` (relative, like the native stubs).
* A private descriptor pool.  tritonclient registers the same fully-qualified names
  (inference.ModelInferRequest, ...) in protobuf's default pool, and a pool refuses a second
  definition of a name ("duplicate symbol").  With our own pool, a process may import both
  tritonclient and poolserve (the test suite does; so may a user's client).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "client" / "poolclient" / "_proto"
POOL_MODULE = '''"""The descriptor pool of poolclient's inference stubs (written by protos/generate.py).

Not protobuf's default pool: tritonclient defines the same names there (see protos/generate.py).
"""
from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''


def fix_inference(out: Path) -> list[Path]:
    """Apply the two rewrites to the generated files under out/inference/."""
    folder = out / "inference"
    changed = []
    for path in sorted(folder.glob("*.py*")):
        if path.suffix not in (".py", ".pyi"):
            continue
        text = path.read_text()
        fixed = re.sub(r"^from inference import ", "from . import ", text, flags=re.M)
        if path.suffix == ".py" and "_descriptor_pool.Default()" in fixed:
            fixed = fixed.replace("_descriptor_pool.Default()", "_pool.POOL")
            fixed = fixed.replace("# @@protoc_insertion_point(imports)",
                                  "from . import _pool\n# @@protoc_insertion_point(imports)", 1)
        if fixed != text:
            path.write_text(fixed)
        changed.append(path)
    pool = folder / "_pool.py"
    pool.write_text(POOL_MODULE)
    (folder / "__init__.py").touch()
    return changed + [pool]


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc  # dev/test dependency only
    import grpc_tools

    protos = sorted(p.relative_to(HERE).as_posix() for p in (HERE / "inference").glob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{HERE}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out / "__init__.py").touch()
    return fix_inference(out)


if __name__ == "__main__":
    for p in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT):
        print(p)
