"""The committed stubs are exactly what `make protos` makes from protos/, and the client works
with nothing but numpy, grpcio and protobuf (no server extras, no kernels, no onnxruntime)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from serving import ROOT, ServerProcess

STUBS = ROOT / "client" / "poolclient" / "_proto"


def test_stubs_match_protos(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the test extra) generates the stubs")
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=120)
    fresh = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {p.relative_to(STUBS): p.read_text() for p in STUBS.rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    assert sorted(fresh) == sorted(committed), "stub files differ: run `make protos`"
    for name, text in fresh.items():
        assert committed[name] == text, f"{name} is stale: run `make protos` and commit the result"


# Every import a client must not need is refused, as if those packages were not installed.
BLOCKED = ["poolserve", "onnxruntime", "onnx", "grpc_health", "grpc_reflection", "grpc_status",
           "prometheus_client", "google.rpc", "torch"]

CLIENT_ONLY = textwrap.dedent("""
    import sys, importlib.abc
    BLOCKED = {blocked!r}

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"{{name}} is blocked in this test")
            return None

    sys.meta_path.insert(0, Refuse())
    import numpy as np
    import poolclient
    with poolclient.PoolClient({target!r}) as c:
        y = c.avg_pool(np.ones((1, 2, 4, 4), np.float32), 2)
        assert y.tolist() == np.ones((1, 2, 2, 2)).tolist()
        try:
            c.max_pool(np.ones((1, 2, 4, 4), np.float32), 9)
        except poolclient.InvalidArgument as e:
            assert e.field is None and "spec.kernel_shape" in e.details  # no google.rpc: message only
        else:
            raise AssertionError("no error")
    print("ok", sorted(m for m in sys.modules if m.split(".")[0] in ("poolserve", "onnxruntime", "grpc_status")))
""")


def test_client_needs_no_server_packages():
    with ServerProcess() as srv:
        code = CLIENT_ONLY.format(blocked=BLOCKED, target=srv.target)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok []"
