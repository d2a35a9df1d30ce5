"""ctypes bindings of the C kernels (kernels/poolkernels.h; keep the two in step).

The library is built by the package build into the installed package
(poolserve/libpoolkernels.so) and loaded from there.  POOLSERVE_KERNEL_LIB names another build
of the same library, for the sanitizer run (`make test-asan`).  POOLSERVE_KERNEL_ISA caps the
hand-written instruction-set paths the library picks at load ("x86-64-v3": AVX2 but no AVX-512;
"x86-64": plain C only), for tests (`make test-isa`) and for comparing the forms' speed.

ctypes.CDLL calls release the GIL for the whole call, so kernels on several request threads run
in parallel; keep it that way (never PyDLL).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

ABI_VERSION = 2
MAX_RANK = 3
MAX_THREADS = 256
# The levels POOLSERVE_KERNEL_ISA names, lowest first (kernels/poolkernels.c's detect_isa)
ISA_LEVELS = ("x86-64", "x86-64-v3", "x86-64-v4")

MODES = {"max": 0, "avg": 1, "lp": 2}
DTYPES = {"float32": 0, "float64": 1, "float16": 2, "int8": 3, "uint8": 4}
LAYOUTS = {"channels_first": 0, "channels_last": 1}

# pool_desc.flags bits (enum pool_flags)
FLAG_GENERIC_ONLY = 1  # run the generic kernels even where a fast path exists (tests compare the two)
FLAG_ALWAYS_SPLIT = 2  # split even a small call over every thread (tests check the split)
FLAG_NO_FALLBACK = 4  # a max backward fast path reports an index off its window (tests: the path took the call)

# pool_status names, by code, as in the header
STATUS = {
    0: "POOL_OK", 1: "POOL_E_NULL", 2: "POOL_E_ENUM", 3: "POOL_E_RANK", 4: "POOL_E_SHAPE",
    5: "POOL_E_PARAM", 6: "POOL_E_SIZE", 7: "POOL_E_OVERFLOW", 8: "POOL_E_WINDOW",
    9: "POOL_E_INDEX", 10: "POOL_E_THREADS", 11: "POOL_E_NOMEM",
}

_Axes = ctypes.c_int64 * MAX_RANK


class PoolDesc(ctypes.Structure):
    _fields_ = [
        ("mode", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("layout", ctypes.c_int32),
        ("rank", ctypes.c_int32),
        ("ceil_mode", ctypes.c_int32),
        ("count_include_pad", ctypes.c_int32),
        ("nthreads", ctypes.c_int32),
        ("flags", ctypes.c_int32),
        ("batch", ctypes.c_int64),
        ("channels", ctypes.c_int64),
        ("in_shape", _Axes),
        ("out_shape", _Axes),
        ("kernel", _Axes),
        ("stride", _Axes),
        ("dilation", _Axes),
        ("pad_begin", _Axes),
        ("pad_end", _Axes),
        ("p", ctypes.c_double),
    ]


class KernelError(RuntimeError):
    """A kernel entry point refused its arguments; ``code`` is the pool_status."""

    def __init__(self, code: int, message: str):
        self.code = code
        self.status = STATUS.get(code, f"status {code}")
        super().__init__(f"{self.status}: {message}")


def library_path() -> Path:
    override = os.environ.get("POOLSERVE_KERNEL_LIB")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "libpoolkernels.so"


def _load() -> ctypes.CDLL:
    path = library_path()
    cap = os.environ.get("POOLSERVE_KERNEL_ISA")
    if cap and cap not in ISA_LEVELS:
        raise ImportError(f"POOLSERVE_KERNEL_ISA={cap!r} is not one of {', '.join(ISA_LEVELS)}")
    if not path.exists():
        raise ImportError(f"poolserve's C kernels are not built: {path} is missing; "
                          "install the package with `pip install .` (or `make serve`), which builds them")
    lib = ctypes.CDLL(str(path))
    # Buffers, the int64_t * of the indices included, travel as plain addresses (c_void_p: the
    # same in the C ABI), so that callers pass ints and ctypes converts nothing per call.
    vp, i64 = ctypes.c_void_p, ctypes.c_int64
    desc_p = ctypes.POINTER(PoolDesc)
    lib.pool_forward.argtypes = [desc_p, vp, i64, vp, i64, vp, i64]
    lib.pool_forward.restype = ctypes.c_int
    lib.pool_backward.argtypes = [desc_p, vp, i64, vp, i64, vp, i64, vp, i64]
    lib.pool_backward.restype = ctypes.c_int
    lib.pool_strerror.argtypes = [ctypes.c_int]
    lib.pool_strerror.restype = ctypes.c_char_p
    lib.pool_isa.argtypes = []
    lib.pool_isa.restype = ctypes.c_char_p
    lib.pool_path.argtypes = [desc_p, ctypes.c_int]
    lib.pool_path.restype = ctypes.c_char_p
    lib.pool_stream_read.argtypes = [vp, i64, ctypes.c_int]
    lib.pool_stream_read.restype = ctypes.c_double
    lib.pool_stream_write.argtypes = [vp, i64, ctypes.c_int]
    lib.pool_stream_write.restype = None
    lib.pool_abi_version.argtypes = []
    lib.pool_abi_version.restype = ctypes.c_int
    if lib.pool_abi_version() != ABI_VERSION:
        raise ImportError(f"{path} has kernel ABI {lib.pool_abi_version()}, this poolserve expects {ABI_VERSION}")
    return lib


lib = _load()
pool_forward = lib.pool_forward
pool_backward = lib.pool_backward


def check(code: int) -> None:
    if code != 0:
        raise KernelError(code, lib.pool_strerror(code).decode())


def isa() -> str:
    return lib.pool_isa().decode()


def path(desc_pointer, backward: bool = False) -> str | None:
    """The kernel a call with this descriptor runs: "generic" or a fast path's name."""
    name = lib.pool_path(desc_pointer, int(backward))
    return None if name is None else name.decode()
