"""The data plane on its own (no protobuf, no server): backend choice by name or policy, limits,
and the errors every protocol adapter maps to status codes."""

from __future__ import annotations

import numpy as np
import pytest

from poolserve import backends, reference
from poolserve.backends.base import Unsupported
from poolserve.dispatch import Dispatcher
from poolserve.errors import LimitExceeded
from poolserve.spec import PoolSpec, SpecError

X = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
MAX2 = PoolSpec("max", (2, 2), return_indices=True)


@pytest.fixture(scope="module")
def dispatcher():
    return Dispatcher(kernel_threads=1, max_elements=10_000, max_result_bytes=64 * 1024)


def test_policy_and_explicit_choice(dispatcher):
    r = dispatcher.forward(MAX2, X)
    assert r.backend == "c" and r.provider == "cpu"  # auto: c first where it runs the spec
    yr, ir = reference.forward(MAX2, X)
    np.testing.assert_array_equal(r.output, yr)
    np.testing.assert_array_equal(r.indices, ir)
    assert dispatcher.forward(MAX2, X, backend="c").backend == "c"


def test_named_backend_that_cannot_load_is_refused(dispatcher):
    for name in backends.names():
        if not dispatcher.slots[name].available:
            with pytest.raises(Unsupported, match=name):
                dispatcher.forward(MAX2, X, backend=name)  # never a silent fallback


def test_unknown_backend_and_provider(dispatcher):
    with pytest.raises(SpecError) as e:
        dispatcher.forward(MAX2, X, backend="tpu")
    assert e.value.field == "spec.backend"
    with pytest.raises(Unsupported, match="cuda"):
        dispatcher.forward(MAX2, X, backend="c", provider="cuda")


def test_limits(dispatcher):
    with pytest.raises(LimitExceeded) as e:
        dispatcher.forward(PoolSpec("max", (1, 1)), np.zeros((1, 1, 101, 100), np.float32))
    assert e.value.field == "input.shape"
    with pytest.raises(LimitExceeded, match="message limit"):  # 9216 float64 = 72 KiB of gradient
        dispatcher.backward(PoolSpec("avg", (2, 2)), (1, 1, 96, 96), np.ones((1, 1, 48, 48)))


def test_fields_are_named_as_the_api_names_them(dispatcher):
    with pytest.raises(SpecError) as e:
        dispatcher.forward(PoolSpec("max", (9, 9)), X)
    assert e.value.field == "spec.kernel_shape"
    with pytest.raises(SpecError) as e:
        dispatcher.forward(PoolSpec("avg", (2, 2)), X.astype(np.int8))
    assert e.value.field == "input.dtype"
    bad = np.full((2, 3, 4, 4), 64, np.int64)  # offset 64 lies in plane (0, 1), not (0, 0)
    with pytest.raises(SpecError) as e:
        dispatcher.backward(PoolSpec("max", (2, 2)), X.shape, np.ones((2, 3, 4, 4), np.float32), indices=bad)
    assert e.value.field == "indices"


def test_channels_last_index_check_accepts_real_indices(dispatcher):
    spec = PoolSpec("max", (2, 2), layout="channels_last", return_indices=True)
    x = np.ascontiguousarray(np.moveaxis(X, 1, -1))
    r = dispatcher.forward(spec, x)
    dy = np.ones_like(r.output)
    dx = dispatcher.backward(spec, x.shape, dy, indices=r.indices).output
    np.testing.assert_array_equal(dx, reference.backward(spec, x.shape, dy, indices=r.indices))
