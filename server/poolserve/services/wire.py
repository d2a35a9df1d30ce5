"""Pool and PoolStream's codec: the tensor bytes bypass protobuf, in both directions.

Why: with protobuf's own (de)serializers a 784 KiB request is copied three times in the server
(gRPC's bytes -> protobuf's parse -> ``Tensor.data`` -> the array) and the answer three times
(``tobytes`` -> the message's field -> ``SerializeToString``).  Measured in the running server
on 1x64x56x56 float32 max 2x2/s2 (README, "Service performance"), those copies were ~90 us of a
~1.1 ms call.  This codec reads the input's data as a view of the bytes gRPC received and
writes the output's data straight from the array, so each direction copies the data once.

It changes nothing on the wire that protobuf readers see:

* In: the request is walked field by field (the protobuf wire format is documented and stable).
  Only the one ``input.data`` field is cut out; everything else -- the spec, the tensor's header,
  unknown fields -- is parsed by protobuf itself, so its rules (defaults, last-one-wins, unknown
  fields) hold unchanged.  A request this walk does not cover exactly (``input`` sent twice,
  which protobuf merges; ``data`` twice; anything malformed) is parsed by protobuf whole, as
  before, so malformed bytes still raise protobuf's DecodeError.
* Out: the response's message is serialized by protobuf without the tensor data, then one more
  occurrence of the ``output`` (and ``indices``) field carrying only ``data`` is appended.  A
  protobuf parser merges repeated occurrences of a singular message field (the spec's "merging"
  rule), so every client -- Python, C++, Go, grpcurl -- reads the same PoolResponse.
"""

from __future__ import annotations

import numpy as np

from poolclient._proto.poolserve.v1 import pooling_pb2 as pb

_LEN = 2  # wire type of length-delimited fields (messages, bytes)
_REQUEST_INPUT = 1  # PoolRequest.input
_TENSOR_DATA = 4  # Tensor.data
_RESPONSE_TENSORS = {"output": 1, "indices": 2}  # PoolResponse field numbers


class _Malformed(Exception):
    """The walk met something it does not take: protobuf parses the request instead."""


def _varint(buf, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise _Malformed
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _fields(buf, start: int, end: int):
    """(field number, wire type, value start, value end, field start) of each field in buf[start:end]."""
    i = start
    while i < end:
        at = i
        key, i = _varint(buf, i, end)
        number, wtype = key >> 3, key & 7
        if number == 0:
            raise _Malformed
        if wtype == 0:
            _, j = _varint(buf, i, end)
        elif wtype == 1:
            j = i + 8
        elif wtype == 5:
            j = i + 4
        elif wtype == _LEN:
            n, i = _varint(buf, i, end)
            j = i + n
        else:  # groups (3, 4) and invalid types: protobuf decides
            raise _Malformed
        if j > end:
            raise _Malformed
        yield number, wtype, i, j, at
        i = j


def _only(found: list):
    if len(found) != 1:
        raise _Malformed
    return found[0]


class SplitRequest:
    """A PoolRequest whose ``input.data`` is left out of ``message`` and given as ``data``, a
    read-only view of the received bytes."""

    __slots__ = ("message", "data")

    def __init__(self, message: pb.PoolRequest, data: memoryview):
        self.message, self.data = message, data


def _split(raw: bytes) -> SplitRequest:
    end = len(raw)
    inputs = [f for f in _fields(raw, 0, end) if f[0] == _REQUEST_INPUT]
    number, wtype, in_start, in_end, in_at = _only(inputs)
    if wtype != _LEN:
        raise _Malformed
    datas = [f for f in _fields(raw, in_start, in_end) if f[0] == _TENSOR_DATA]
    _, dtype_, d_start, d_end, d_at = _only(datas)
    if dtype_ != _LEN:
        raise _Malformed
    # the input's bytes without its data field, under a new length prefix
    header = raw[in_start:d_at] + raw[d_end:in_end]
    rest = (raw[:in_at] + bytes([(_REQUEST_INPUT << 3) | _LEN]) + _encode_varint(len(header)) + header
            + raw[in_end:])
    return SplitRequest(pb.PoolRequest.FromString(rest), memoryview(raw)[d_start:d_end])


class PoolRequestCodec:
    """gRPC's request_deserializer for Pool and PoolStream.  ``DESCRIPTOR`` lets guard.py name
    the message in its INVALID_ARGUMENT answer, as it does for protobuf's own FromString."""

    DESCRIPTOR = pb.PoolRequest.DESCRIPTOR

    def parse(self, raw: bytes):
        try:
            return _split(raw)
        except _Malformed:
            return pb.PoolRequest.FromString(raw)  # protobuf's rules, or its DecodeError


def unsplit(request) -> tuple[pb.PoolRequest, memoryview | None]:
    """(the message, the input's data when it was cut out, else None)."""
    if isinstance(request, SplitRequest):
        return request.message, request.data
    return request, None


class SplitResponse:
    """A PoolResponse whose tensors carry only their header; ``arrays`` maps "output"/"indices"
    to the arrays whose bytes the serializer appends."""

    __slots__ = ("message", "arrays")

    def __init__(self, message: pb.PoolResponse, arrays: dict[str, np.ndarray]):
        self.message, self.arrays = message, arrays


def _tensor_bytes(a: np.ndarray):
    """The array's bytes as the wire has them (little-endian, C order), without a copy when it
    already is so."""
    if a.dtype.byteorder == ">" or not a.flags.c_contiguous:
        return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
    return memoryview(a).cast("B") if a.nbytes else b""


def serialize_response(response) -> bytes:
    """gRPC's response_serializer for Pool and PoolStream (also takes a plain PoolResponse)."""
    if isinstance(response, pb.PoolResponse):
        return response.SerializeToString()
    parts = [response.message.SerializeToString()]
    for name, a in response.arrays.items():
        data = _tensor_bytes(a)
        n = len(data)  # bytes, or a memoryview cast to bytes: its length is its byte count
        inner = bytes([(_TENSOR_DATA << 3) | _LEN]) + _encode_varint(n)
        parts += [bytes([(_RESPONSE_TENSORS[name] << 3) | _LEN]), _encode_varint(len(inner) + n), inner, data]
    return b"".join(parts)  # the one copy of the data
