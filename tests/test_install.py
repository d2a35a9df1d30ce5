"""`pip install .` into an empty venv builds the kernels, and the installed package finds them
from site-packages, with the source tree nowhere on the path."""

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

CHECK = """
import numpy as np, poolserve, poolserve.backends.c as c, poolserve.backends._kernels as k
from poolserve import PoolSpec, reference
assert 'site-packages' in poolserve.__file__, poolserve.__file__
assert str(k.library_path()).startswith(sys.prefix), k.library_path()
x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
spec = PoolSpec('max', (3, 3), strides=(2, 2), return_indices=True)
got, want = c.CBackend().forward(spec, x), reference.forward(spec, x)
assert (got[0] == want[0]).all() and (got[1] == want[1]).all()
print('ok', k.isa())
"""


def test_pip_install_into_an_empty_venv(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
                   check=True, cwd=tmp_path, timeout=600)
    out = subprocess.run([py, "-I", "-c", "import sys\n" + CHECK], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
