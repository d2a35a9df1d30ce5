"""The C entry points called directly with wrong arguments: each returns its error code and
touches nothing (under `make test-asan` an out-of-bounds access would abort the run).

This is the only place that bypasses the Python-side checks of poolserve.backends.c."""

import ctypes

import numpy as np
import pytest

from poolserve.backends import _kernels as k

pytestmark = pytest.mark.kernels
I64P = ctypes.POINTER(ctypes.c_int64)


def good_desc(mode="max", dtype="float32", rank=2):
    d = k.PoolDesc()
    d.mode, d.dtype, d.layout, d.rank = k.MODES[mode], k.DTYPES[dtype], 0, rank
    d.nthreads, d.batch, d.channels, d.p = 2, 2, 3, 2.0
    for a in range(rank):
        d.in_shape[a], d.out_shape[a], d.kernel[a], d.stride[a], d.dilation[a] = 4, 2, 2, 2, 1
    return d


def buffers(d, dtype="float32"):
    x_elems = d.batch * d.channels * int(np.prod([d.in_shape[a] for a in range(d.rank)]))
    y_elems = d.batch * d.channels * int(np.prod([d.out_shape[a] for a in range(d.rank)]))
    return np.zeros(x_elems, dtype), np.zeros(y_elems, dtype), np.zeros(y_elems, np.int64)


def forward(d, x, y, ind=None, x_bytes=None, y_bytes=None, ind_bytes=None):
    return k.pool_forward(None if d is None else ctypes.byref(d),
                          None if x is None else x.ctypes.data, x.nbytes if x_bytes is None else x_bytes,
                          None if y is None else y.ctypes.data, y.nbytes if y_bytes is None else y_bytes,
                          None if ind is None else ind.ctypes.data_as(I64P),
                          (0 if ind is None else ind.nbytes) if ind_bytes is None else ind_bytes)


def status(name):
    return {v: c for c, v in k.STATUS.items()}[name]


def test_the_good_call_succeeds():
    d = good_desc()
    x, y, ind = buffers(d)
    x[:] = np.arange(x.size)
    assert forward(d, x, y, ind) == 0
    assert y.max() == x.max() and ind.max() == x.size - 1


def mutate(**fields):
    def apply(d):
        for name, value in fields.items():
            if isinstance(value, tuple):
                getattr(d, name)[value[0]] = value[1]
            else:
                setattr(d, name, value)
    return apply


DESC_CASES = [
    ("mode out of range", mutate(mode=3), "POOL_E_ENUM"),
    ("negative mode", mutate(mode=-1), "POOL_E_ENUM"),
    ("dtype out of range", mutate(dtype=9), "POOL_E_ENUM"),
    ("layout out of range", mutate(layout=2), "POOL_E_ENUM"),
    ("rank 0", mutate(rank=0), "POOL_E_RANK"),
    ("rank 4", mutate(rank=4), "POOL_E_RANK"),
    ("threads 0", mutate(nthreads=0), "POOL_E_THREADS"),
    ("threads 10000", mutate(nthreads=10000), "POOL_E_THREADS"),
    ("unknown flag bit", mutate(flags=1 << 30), "POOL_E_PARAM"),
    ("ceil_mode 2", mutate(ceil_mode=2), "POOL_E_PARAM"),
    ("batch 0", mutate(batch=0), "POOL_E_SHAPE"),
    ("negative channels", mutate(channels=-3), "POOL_E_SHAPE"),
    ("input dim 0", mutate(in_shape=(0, 0)), "POOL_E_SHAPE"),
    ("wrong output shape", mutate(out_shape=(1, 3)), "POOL_E_SHAPE"),
    ("kernel 0", mutate(kernel=(0, 0)), "POOL_E_PARAM"),
    ("stride 0", mutate(stride=(1, 0)), "POOL_E_PARAM"),
    ("negative stride", mutate(stride=(1, -2)), "POOL_E_PARAM"),
    ("dilation 0", mutate(dilation=(0, 0)), "POOL_E_PARAM"),
    ("negative pad", mutate(pad_begin=(0, -1)), "POOL_E_PARAM"),
    ("pad = kernel", mutate(pad_end=(0, 2)), "POOL_E_PARAM"),
    ("huge kernel", mutate(kernel=(0, 1 << 40)), "POOL_E_PARAM"),
    ("kernel > input", mutate(kernel=(0, 5), stride=(0, 1)), "POOL_E_SHAPE"),
    ("elements overflow int64", mutate(batch=1 << 40, channels=1 << 40), "POOL_E_OVERFLOW"),
]


@pytest.mark.parametrize("name,change,expected", DESC_CASES, ids=[c[0] for c in DESC_CASES])
def test_bad_descriptor_is_refused(name, change, expected):
    d = good_desc()
    x, y, ind = buffers(d)  # sized for the good descriptor: any access past them would be caught
    change(d)
    assert k.STATUS[forward(d, x, y, ind)] == expected


def test_window_over_padding_only_is_refused():
    d = good_desc(rank=1)
    # in 4, kernel 2 dilated by 5 (extent 6), pads 1/1: window 0 taps -1 and 4, both outside
    d.in_shape[0], d.kernel[0], d.dilation[0], d.stride[0], d.pad_begin[0], d.pad_end[0], d.out_shape[0] = 4, 2, 5, 1, 1, 1, 1
    x, y, ind = buffers(d)
    assert k.STATUS[forward(d, x, y, ind)] == "POOL_E_WINDOW"


def test_lp_needs_positive_p():
    for p in (0.0, -1.0, float("nan"), float("inf")):
        d = good_desc("lp")
        d.p = p
        x, y, _ = buffers(d)
        assert k.STATUS[forward(d, x, y)] == "POOL_E_PARAM"


def test_integer_dtypes_only_for_max():
    for mode in ("avg", "lp"):
        d = good_desc(mode, "int8")
        x, y, _ = buffers(d, "int8")
        assert k.STATUS[forward(d, x, y)] == "POOL_E_ENUM"


# each case changes one argument of a good call: (pointer, byte count) pairs by name
BUFFER_CASES = [
    ("null descriptor", lambda a: a.update(d=None), "POOL_E_NULL"),
    ("null input", lambda a: a.update(x=(None, a["x"][1])), "POOL_E_NULL"),
    ("null output", lambda a: a.update(y=(None, a["y"][1])), "POOL_E_NULL"),
    ("input one byte short", lambda a: a.update(x=(a["x"][0], a["x"][1] - 1)), "POOL_E_SIZE"),
    ("input one byte long", lambda a: a.update(x=(a["x"][0], a["x"][1] + 1)), "POOL_E_SIZE"),
    ("output one element short", lambda a: a.update(y=(a["y"][0], a["y"][1] - 4)), "POOL_E_SIZE"),
    ("indices one short", lambda a: a.update(ind=(a["ind"][0], a["ind"][1] - 8)), "POOL_E_SIZE"),
    ("indices size without pointer", lambda a: a.update(ind=(None, 8)), "POOL_E_SIZE"),
    ("negative byte count", lambda a: a.update(x=(a["x"][0], -a["x"][1])), "POOL_E_SIZE"),
]


@pytest.mark.parametrize("name,change,expected", BUFFER_CASES, ids=[c[0] for c in BUFFER_CASES])
def test_bad_buffers_are_refused(name, change, expected):
    d = good_desc()
    x, y, ind = buffers(d)
    args = dict(d=ctypes.byref(d), x=(x.ctypes.data, x.nbytes), y=(y.ctypes.data, y.nbytes),
                ind=(ind.ctypes.data_as(I64P), ind.nbytes))
    change(args)
    code = k.pool_forward(args["d"], *args["x"], *args["y"], *args["ind"])
    assert k.STATUS[code] == expected


def test_indices_refused_for_avg():
    d = good_desc("avg")
    x, y, ind = buffers(d)
    assert k.STATUS[forward(d, x, y, ind)] == "POOL_E_NULL"


def backward(d, dy, x=None, ind=None, dx=None, dy_bytes=None, dx_bytes=None):
    return k.pool_backward(ctypes.byref(d), dy.ctypes.data, dy.nbytes if dy_bytes is None else dy_bytes,
                           None if x is None else x.ctypes.data, 0 if x is None else x.nbytes,
                           None if ind is None else ind.ctypes.data_as(I64P), 0 if ind is None else ind.nbytes,
                           None if dx is None else dx.ctypes.data,
                           (0 if dx is None else dx.nbytes) if dx_bytes is None else dx_bytes)


def test_backward_checks():
    d = good_desc()
    x, dy, ind = buffers(d)
    dx = np.zeros_like(x)
    assert forward(d, x, dy, ind) == 0
    assert backward(d, dy, ind=ind, dx=dx) == 0
    assert k.STATUS[backward(d, dy, dx=dx)] == "POOL_E_NULL"                         # max without indices
    assert k.STATUS[backward(d, dy, ind=ind, dx=None)] == "POOL_E_NULL"
    assert k.STATUS[backward(d, dy, ind=ind, dx=dx, dx_bytes=dx.nbytes - 4)] == "POOL_E_SIZE"
    assert k.STATUS[backward(d, dy, ind=ind, dx=dx, dy_bytes=dy.nbytes + 4)] == "POOL_E_SIZE"
    for bad in (-1, x.size, 1 << 60):                                                # outside the tensor
        wrong = ind.copy()
        wrong[5] = bad
        assert k.STATUS[backward(d, dy, ind=wrong, dx=dx)] == "POOL_E_INDEX"
    wrong = ind.copy()
    wrong[0] = ind[-1]                                                               # inside, but another plane
    assert k.STATUS[backward(d, dy, ind=wrong, dx=dx)] == "POOL_E_INDEX"
    lp = good_desc("lp")
    assert k.STATUS[backward(lp, dy, dx=dx)] == "POOL_E_NULL"                        # lp needs x
    assert k.STATUS[backward(lp, dy, x=x, ind=ind, dx=dx)] == "POOL_E_NULL"          # and no indices
    i8 = good_desc("max", "int8")
    x8, dy8, _ = buffers(i8, "int8")
    assert k.STATUS[backward(i8, dy8, ind=ind, dx=x8.copy())] == "POOL_E_ENUM"       # gradients are floats


def test_strerror_and_isa():
    for code, name in k.STATUS.items():
        assert k.lib.pool_strerror(code)
    assert k.lib.pool_strerror(999) == b"unknown status"
    assert k.isa() in {"x86-64-v4", "x86-64-v3", "x86-64", "neon", "generic"}
    with pytest.raises(k.KernelError, match="POOL_E_SIZE"):
        k.check(status("POOL_E_SIZE"))


def test_calls_release_the_gil():
    # CDLL (not PyDLL) functions drop the GIL for the call, so request threads run kernels in
    # parallel; a PyDLL or the PYTHONAPI flag would serialise them
    assert not isinstance(k.lib, ctypes.PyDLL)
    for fn in (k.pool_forward, k.pool_backward):
        assert fn._flags_ & ctypes._FUNCFLAG_PYTHONAPI == 0
