"""Open Inference Protocol tensors <-> numpy: the input's three sources, the outputs' two sinks.

An input's bytes come from exactly one of: a system shared-memory region named in its
parameters, ``raw_input_contents`` (little-endian, row-major), or the typed ``contents`` field
of its datatype.  Outputs go to ``raw_output_contents`` or to a shared-memory region.  This
module checks what the protocol itself defines (names, datatype strings, element and byte
counts, parameter types); whether the shape suits the pooling is the dispatcher's to say, once.

Errors name the field as the client wrote it, e.g. ``inputs[0].datatype`` or
``raw_input_contents[0]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from poolclient._proto.inference import grpc_service_pb2 as pb

from ..errors import LimitExceeded
from ..models import DATATYPE_BY_NUMPY, INPUT, Model
from ..shm import SharedMemoryRegistry
from ..spec import SpecError

# The typed contents field of each datatype.  FP16 has none in the protocol: raw only.
CONTENTS_FIELD = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT8": "int_contents",
                  "UINT8": "uint_contents", "INT64": "int64_contents"}
_INT_RANGE = {"INT8": (-128, 127), "UINT8": (0, 255)}
_CONTENTS_FIELDS = tuple(f.name for f in pb.InferTensorContents.DESCRIPTOR.fields)


@dataclass(frozen=True)
class ShmRef:
    """A tensor's place in a registered shared-memory region."""

    region: str
    offset: int
    byte_size: int


def _param(params, key: str, field: str, kinds: tuple[str, ...]):
    """The value of parameter ``key`` if set, checked to be one of the oneof ``kinds``."""
    if key not in params:
        return None
    p = params[key]
    kind = p.WhichOneof("parameter_choice")
    if kind not in kinds:
        raise SpecError(f"{field}.parameters[{key!r}]", kind or "unset",
                        f"must be set as {' or '.join(kinds)}")
    return getattr(p, kind)


def string_param(params, key: str, field: str) -> str:
    value = _param(params, key, field, ("string_param",))
    return value or ""


def shm_ref(params, field: str) -> ShmRef | None:
    """The shared-memory trio of a tensor's parameters, or None when it names no region."""
    region = _param(params, "shared_memory_region", field, ("string_param",))
    if not region:
        return None
    ints = ("int64_param", "uint64_param")
    size = _param(params, "shared_memory_byte_size", field, ints)
    if size is None:
        raise SpecError(f"{field}.parameters['shared_memory_byte_size']", None,
                        "is needed with shared_memory_region")
    offset = _param(params, "shared_memory_offset", field, ints) or 0
    if size < 0 or offset < 0:
        raise SpecError(f"{field}.parameters", {"offset": offset, "byte_size": size}, "must be >= 0")
    return ShmRef(region, offset, size)


def _little_endian(dtype: str) -> np.dtype:
    return np.dtype(dtype).newbyteorder("<")


def decode_input(request: pb.ModelInferRequest, model: Model, shm: SharedMemoryRegistry,
                 max_elements: int) -> np.ndarray:
    """The request's one input as an array of the model's dtype (no copy from raw bytes)."""
    if len(request.inputs) != 1:
        raise SpecError("inputs", [t.name for t in request.inputs],
                        f"model {model.name!r} takes exactly one input, {INPUT!r}")
    t = request.inputs[0]
    if t.name != INPUT:
        raise SpecError("inputs[0].name", t.name, f"model {model.name!r} has one input, {INPUT!r}")
    if t.datatype != model.datatype:
        raise SpecError("inputs[0].datatype", t.datatype, f"model {model.name!r} takes {model.datatype}")
    shape = tuple(int(d) for d in t.shape)
    if len(shape) != 2 + model.rank:
        raise SpecError("inputs[0].shape", list(shape),
                        f"model {model.name!r} takes a rank-{2 + model.rank} input {model.input_shape()}")
    if any(d < 0 for d in shape):
        raise SpecError("inputs[0].shape", list(shape), "dimensions must be >= 0")
    n = math.prod(shape)
    if n > max_elements:  # before any byte is decoded or allocated
        raise LimitExceeded("inputs[0].shape", list(shape),
                            f"{n} elements is over this server's limit of {max_elements}")
    dtype = _little_endian(model.dtype)
    nbytes = n * dtype.itemsize
    ref = shm_ref(t.parameters, "inputs[0]")
    raw = request.raw_input_contents
    if ref is not None:
        if len(raw):
            raise SpecError("raw_input_contents", f"{len(raw)} entries",
                            "must be empty: the only input is in shared memory")
        if ref.byte_size != nbytes:
            raise SpecError("inputs[0].parameters['shared_memory_byte_size']", ref.byte_size,
                            f"shape {list(shape)} of {model.datatype} is {nbytes} bytes")
        data = shm.read("inputs[0]", ref.region, ref.offset, nbytes)
    elif len(raw):
        if len(raw) != 1:
            raise SpecError("raw_input_contents", f"{len(raw)} entries", "needs one entry per input: 1")
        if t.HasField("contents"):
            raise SpecError("inputs[0].contents", "set", "send raw_input_contents or contents, not both")
        data = raw[0]  # each read of a bytes field copies: read it once
        if len(data) != nbytes:
            raise SpecError("raw_input_contents[0]", f"{len(data)} bytes",
                            f"shape {list(shape)} of {model.datatype} is {nbytes} bytes")
    elif t.HasField("contents"):
        return _typed(t.contents, model.datatype, shape, n).astype(model.dtype, copy=False)
    else:
        raise SpecError("inputs[0]", "no data",
                        "send raw_input_contents, contents or a shared_memory_region parameter")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(model.dtype, copy=False)


def _typed(contents: pb.InferTensorContents, datatype: str, shape: tuple, n: int) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise SpecError("inputs[0].contents", datatype,
                        f"{datatype} has no typed contents field in the protocol: send raw_input_contents")
    for other in _CONTENTS_FIELDS:
        if other != field and len(getattr(contents, other)):
            raise SpecError(f"inputs[0].contents.{other}", f"{len(getattr(contents, other))} values",
                            f"datatype {datatype} goes in contents.{field}")
    values = getattr(contents, field)
    if len(values) != n:
        raise SpecError(f"inputs[0].contents.{field}", f"{len(values)} values",
                        f"shape {list(shape)} has {n} elements")
    if datatype in _INT_RANGE:
        a = np.array(values, dtype=np.int64)
        lo, hi = _INT_RANGE[datatype]
        if a.size and (a.min() < lo or a.max() > hi):
            bad = a[(a < lo) | (a > hi)][0]
            raise SpecError(f"inputs[0].contents.{field}", int(bad), f"is outside {datatype}'s range {lo}..{hi}")
    else:
        a = np.array(values, dtype=np.float64 if datatype == "FP64" else np.float32)
    return a.reshape(shape)


@dataclass
class Encoded:
    response: pb.ModelInferResponse
    nbytes: int  # bytes of tensor data produced (socket or shared memory)


def encode_outputs(response: pb.ModelInferResponse, wanted: list[tuple[str, ShmRef | None]],
                   arrays: dict[str, np.ndarray], shm: SharedMemoryRegistry) -> int:
    """Add the wanted outputs to ``response``; return the bytes written.

    Raw outputs come first and shared-memory ones after them: tritonclient pairs
    raw_output_contents with outputs by position, so a shared-memory output in between would
    shift every later one.
    """
    total = 0
    ordered = [w for w in wanted if w[1] is None] + [w for w in wanted if w[1] is not None]
    for name, ref in ordered:
        a = arrays[name]
        o = response.outputs.add(name=name, datatype=DATATYPE_BY_NUMPY[a.dtype.name], shape=a.shape)
        le = a.astype(_little_endian(a.dtype.name), copy=False)
        if ref is None:
            response.raw_output_contents.append(le.tobytes())  # protobuf takes bytes only: one copy
        else:
            i = [w[0] for w in wanted].index(name)
            shm.write(f"outputs[{i}]", ref.region, ref.offset, ref.byte_size, le)
            o.parameters["shared_memory_region"].string_param = ref.region
            o.parameters["shared_memory_byte_size"].int64_param = a.nbytes
            if ref.offset:
                o.parameters["shared_memory_offset"].int64_param = ref.offset
        total += a.nbytes
    return total
