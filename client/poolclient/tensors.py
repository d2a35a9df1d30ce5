"""numpy arrays <-> the wire's Tensor message, for the client and the server alike.

One bytes field per tensor, little-endian, C order.  On the way in, ``np.frombuffer`` wraps the
received bytes without a copy (read-only); on the way out one ``tobytes()`` is the floor, since
protobuf takes no memoryview.  (The server's Pool and PoolStream go further: their codec,
poolserve/services/wire.py, keeps the tensor bytes out of protobuf altogether.)  Decoding checks dtype, shape and byte length before anything
looks at the data, so no later code ever sees a buffer whose size disagrees with its shape.
"""

from __future__ import annotations

import math

import numpy as np

from ._proto.poolserve.v1 import pooling_pb2 as pb

# wire dtype <-> numpy dtype name.  BFLOAT16 has no numpy dtype and no backend yet.
NUMPY_BY_DTYPE = {
    pb.FLOAT32: "float32",
    pb.FLOAT64: "float64",
    pb.FLOAT16: "float16",
    pb.INT8: "int8",
    pb.UINT8: "uint8",
    pb.INT64: "int64",
}
DTYPE_BY_NUMPY = {name: code for code, name in NUMPY_BY_DTYPE.items()}

LAYOUT_BY_NAME = {"channels_first": pb.CHANNELS_FIRST, "channels_last": pb.CHANNELS_LAST}
NAME_BY_LAYOUT = {code: name for name, code in LAYOUT_BY_NAME.items()}


class TensorError(ValueError):
    """A Tensor message that does not describe a valid array.  ``field`` names the message
    field (e.g. ``input.shape``), ``value`` the offending value."""

    def __init__(self, field: str, value, message: str):
        self.field = field
        self.value = value
        super().__init__(f"{field}={value!r}: {message}")


def dtype_name(code: int) -> str:
    """The wire dtype's name as the user knows it (FLOAT32, or the number if unknown)."""
    try:
        return pb.DType.Name(code)
    except ValueError:
        return str(code)


def to_tensor(a: np.ndarray, layout: str = "channels_first") -> pb.Tensor:
    """Encode an array into a new Tensor (see fill_tensor)."""
    return fill_tensor(pb.Tensor(), a, layout)


def fill_tensor(t: pb.Tensor, a: np.ndarray, layout: str = "channels_first") -> pb.Tensor:
    """Encode an array into ``t``, a Tensor field of the message being built: one copy into the
    message's bytes (little-endian, C order).

    Fill the field in place (``fill_tensor(req.input, x)``) rather than passing a built Tensor
    to a constructor or CopyFrom: those copy the data once more, which on 784 KiB costs more
    than the tobytes() itself (README, "Service performance")."""
    a = fill_header(t, a, layout)
    # tobytes() writes C order whatever the strides: the one copy protobuf requires anyway
    t.data = a.tobytes(order="C")
    return t


def fill_header(t: pb.Tensor, a: np.ndarray, layout: str = "channels_first") -> np.ndarray:
    """Set ``t``'s dtype, shape and layout from the array, not its data; return the array in
    the wire's byte order (the array itself when it already is little-endian)."""
    a = np.asarray(a)
    code = _WIRE_BY_LE_DTYPE.get(a.dtype)  # dtype.name is slow (Python code in numpy): ~10% of a call
    if code is None:
        if a.dtype.name not in DTYPE_BY_NUMPY:
            raise TensorError("dtype", a.dtype.name, f"poolserve takes {', '.join(DTYPE_BY_NUMPY)}")
        a = _little_endian(a)
        code = DTYPE_BY_NUMPY[a.dtype.name]
    lay = LAYOUT_BY_NAME.get(layout)
    if lay is None:
        raise TensorError("layout", layout, f"must be one of {', '.join(LAYOUT_BY_NAME)}")
    t.dtype = code
    t.shape[:] = a.shape
    t.layout = lay
    return a


# little-endian numpy dtypes -> wire dtype: the fast path of fill_tensor
_WIRE_BY_LE_DTYPE = {np.dtype(name).newbyteorder("<"): code for name, code in DTYPE_BY_NUMPY.items()}


def _little_endian(a: np.ndarray) -> np.ndarray:
    le = a.dtype.newbyteorder("<")
    return a if a.dtype == le else a.astype(le)


def tensor_header(a: np.ndarray, layout: str = "channels_first") -> pb.Tensor:
    """A Tensor with the array's dtype, shape and layout and no data (PoolChunked's headers)."""
    a = np.asarray(a)
    if a.dtype.name not in DTYPE_BY_NUMPY:
        raise TensorError("dtype", a.dtype.name, f"poolserve takes {', '.join(DTYPE_BY_NUMPY)}")
    if layout not in LAYOUT_BY_NAME:
        raise TensorError("layout", layout, f"must be one of {', '.join(LAYOUT_BY_NAME)}")
    return pb.Tensor(dtype=DTYPE_BY_NUMPY[a.dtype.name], shape=a.shape, layout=LAYOUT_BY_NAME[layout])


def array_chunks(a: np.ndarray, chunk_bytes: int):
    """The array's bytes (little-endian, C order) as bytes objects of at most chunk_bytes.

    One copy per byte, into each chunk (protobuf takes no memoryview); a C-contiguous
    little-endian array is sliced in place, anything else is first made so."""
    a = np.ascontiguousarray(_little_endian(np.asarray(a)))
    flat = memoryview(a).cast("B") if a.nbytes else memoryview(b"")
    for start in range(0, len(flat), chunk_bytes):
        yield flat[start:start + chunk_bytes].tobytes()


def join_chunks(chunks, sizes) -> list[memoryview]:
    """Gather a stream of byte chunks into consecutive pieces of the given sizes.

    Returns one memoryview per size, over one buffer allocated up front.  Raises TensorError when
    the chunks add up to more or fewer bytes than the sizes."""
    total = sum(sizes)
    buf = np.empty(total, np.uint8)  # no zero-fill: every byte is written below or refused
    view = memoryview(buf)
    filled = 0
    for chunk in chunks:
        if filled + len(chunk) > total:
            raise TensorError("chunk", f"{filled + len(chunk)} bytes", f"more than the {total} bytes declared")
        view[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
    if filled != total:
        raise TensorError("chunk", f"{filled} bytes", f"fewer than the {total} bytes declared")
    out, start = [], 0
    for n in sizes:
        out.append(view[start:start + n])
        start += n
    return out


def from_header_and_bytes(t: pb.Tensor, data, field: str = "tensor") -> np.ndarray:
    """A read-only array from a data-less Tensor header and its bytes (already length-checked)."""
    dtype, shape = check_header(t, field)
    a = np.frombuffer(data, dtype=dtype).reshape(shape)
    a.flags.writeable = False
    return a if dtype.isnative else a.astype(dtype.newbyteorder("="))


def nbytes_of(t: pb.Tensor, field: str = "tensor") -> int:
    dtype, shape = check_header(t, field)
    return math.prod(shape) * dtype.itemsize


def check_header(t: pb.Tensor, field: str, *, max_elements: int | None = None):
    """Validate a tensor's dtype and shape; return (numpy dtype, shape).

    Raises TensorError (an invalid tensor) or ``ElementLimit`` (valid, but over the limit).
    """
    if t.dtype not in NUMPY_BY_DTYPE:
        known = ", ".join(pb.DType.Name(c) for c in NUMPY_BY_DTYPE)
        raise TensorError(f"{field}.dtype", dtype_name(t.dtype), f"must be one of {known}")
    if t.layout not in NAME_BY_LAYOUT:
        raise TensorError(f"{field}.layout", t.layout, "must be CHANNELS_FIRST or CHANNELS_LAST")
    shape = tuple(t.shape)
    if not shape:
        raise TensorError(f"{field}.shape", list(shape), "must not be empty")
    if any(d < 1 for d in shape):
        raise TensorError(f"{field}.shape", list(shape), "every dimension must be >= 1")
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise ElementLimit(f"{field}.shape", list(shape),
                           f"{count} elements is over this server's limit of {max_elements}")
    return np.dtype(NUMPY_BY_DTYPE[t.dtype]).newbyteorder("<"), shape


class ElementLimit(TensorError):
    """A well-formed tensor with more elements than the receiver accepts (RESOURCE_EXHAUSTED)."""


def from_tensor(t: pb.Tensor, field: str = "tensor", *, max_elements: int | None = None,
                data=None) -> np.ndarray:
    """Decode a tensor without copying its data: a read-only array over the message's bytes,
    or over ``data`` (any bytes-like object) when the data came apart from the message
    (the server's codec, services/wire.py)."""
    dtype, shape = check_header(t, field, max_elements=max_elements)
    if data is None:
        data = t.data  # each read of a bytes field copies it: read it once
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise TensorError(f"{field}.data", f"{len(data)} bytes",
                          f"shape {list(shape)} of {dtype_name(t.dtype)} needs exactly {expected} bytes")
    a = np.frombuffer(data, dtype=dtype).reshape(shape)
    return a if dtype.isnative else a.astype(dtype.newbyteorder("="))


def layout_of(t: pb.Tensor) -> str:
    return NAME_BY_LAYOUT.get(t.layout, "channels_first")
