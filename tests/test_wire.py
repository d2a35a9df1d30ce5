"""The Pool/PoolStream codec (poolserve.services.wire) against protobuf's own parser and
serializer, the oracle: whatever bytes arrive, the codec's request is protobuf's request, and
whatever it writes, protobuf reads back as the response fill_tensor would have built."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from poolclient._proto.poolserve.v1 import pooling_pb2 as pb
from poolclient.tensors import fill_header, fill_tensor
from poolserve.services.wire import PoolRequestCodec, SplitRequest, SplitResponse, serialize_response, unsplit

CODEC = PoolRequestCodec()
UNKNOWN_FIELDS = [b"", b"\x78\x01", b"\x7a\x03abc", b"\x7d\x01\x02\x03\x04"]  # field 15: varint, bytes, fixed32


def _parsed(raw: bytes) -> pb.PoolRequest:
    """The codec's answer as one PoolRequest (the data put back), to compare with protobuf's."""
    message, data = unsplit(CODEC.parse(raw))
    out = pb.PoolRequest()
    out.CopyFrom(message)
    if data is not None:
        out.input.data = bytes(data)
    return out


def _same(a: pb.PoolRequest, b: pb.PoolRequest) -> bool:
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


@st.composite
def requests(draw):
    req = pb.PoolRequest()
    if draw(st.booleans()):
        req.spec.mode = draw(st.sampled_from([pb.MAX, pb.AVG, pb.LP]))
        req.spec.kernel_shape[:] = draw(st.lists(st.integers(1, 300), max_size=3))
        req.spec.strides[:] = draw(st.lists(st.integers(1, 5), max_size=3))
        req.spec.return_indices = draw(st.booleans())
        req.spec.backend = draw(st.sampled_from(["", "c", "onnx"]))
    if draw(st.booleans()):
        req.input.dtype = draw(st.sampled_from([pb.FLOAT32, pb.FLOAT16, pb.INT8]))
        req.input.shape[:] = draw(st.lists(st.integers(0, 1 << 40), max_size=5))
        req.input.layout = draw(st.sampled_from([pb.CHANNELS_FIRST, pb.CHANNELS_LAST]))
        if draw(st.booleans()):
            # sizes across the one-byte and multi-byte varint length prefixes
            req.input.data = draw(st.binary(max_size=300)) + bytes(draw(st.sampled_from([0, 200, 20000])))
    raw = req.SerializeToString()
    # unknown fields at the top and inside the input, and the fields in another order
    top, inner = draw(st.sampled_from(UNKNOWN_FIELDS)), draw(st.sampled_from(UNKNOWN_FIELDS))
    if req.HasField("input") and inner:
        tensor = req.input.SerializeToString() + inner
        rest = pb.PoolRequest(spec=req.spec).SerializeToString() if req.HasField("spec") else b""
        raw = rest + b"\x0a" + _varint(len(tensor)) + tensor
    return raw + top


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


@settings(max_examples=400)
@given(requests())
def test_request_is_protobufs_request(raw):
    assert _same(_parsed(raw), pb.PoolRequest.FromString(raw))


def test_the_data_is_a_view_of_the_received_bytes():
    req = pb.PoolRequest()
    fill_tensor(req.input, np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8))
    raw = req.SerializeToString()
    got = CODEC.parse(raw)
    assert isinstance(got, SplitRequest)
    assert got.data.obj is raw  # no copy: a memoryview over gRPC's bytes
    assert bytes(got.data) == req.input.data
    assert not got.message.input.data


@settings(max_examples=200)
@given(st.lists(requests(), min_size=2, max_size=3))
def test_repeated_messages_merge_as_protobuf_merges(raws):
    # a message sent as several concatenated pieces: protobuf merges the input fields (and the
    # data's last occurrence wins); the codec hands such a request to protobuf whole
    raw = b"".join(raws)
    assert _same(_parsed(raw), pb.PoolRequest.FromString(raw))


@settings(max_examples=400)
@given(st.one_of(st.binary(max_size=64), requests().flatmap(
    lambda raw: st.integers(0, max(len(raw) - 1, 0)).map(lambda cut: raw[:cut]))))
def test_malformed_bytes_fail_as_protobuf_fails(raw):
    try:
        want = pb.PoolRequest.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            CODEC.parse(raw)
        return
    assert _same(_parsed(raw), want)


ARRAYS = st.builds(
    lambda dtype, shape, order, sliced: _array(dtype, shape, order, sliced),
    st.sampled_from(["float32", "float16", "float64", "int8", "uint8", "int64"]),
    st.lists(st.integers(1, 6), min_size=3, max_size=5),
    st.sampled_from(["<", ">", "="]),
    st.booleans())


def _array(dtype, shape, order, sliced):
    rng = np.random.default_rng(len(shape))
    a = (rng.standard_normal(shape) * 50).astype(np.dtype(dtype).newbyteorder(order))
    return a[..., ::2] if sliced else a  # a non-contiguous view as well


@settings(max_examples=300)
@given(ARRAYS, st.one_of(st.none(), ARRAYS), st.sampled_from(["channels_first", "channels_last"]),
       st.sampled_from(["c", "onnx"]))
def test_response_reads_back_as_fill_tensors_response(out, indices, layout, backend):
    want = pb.PoolResponse(backend=backend, provider="cpu")
    fill_tensor(want.output, out, layout)
    msg = pb.PoolResponse(backend=backend, provider="cpu")
    arrays = {"output": fill_header(msg.output, out, layout)}
    if indices is not None:
        fill_tensor(want.indices, indices, layout)
        arrays["indices"] = fill_header(msg.indices, indices, layout)
    got = pb.PoolResponse.FromString(serialize_response(SplitResponse(msg, arrays)))
    assert got == want


def test_plain_response_is_serialized_by_protobuf():
    r = pb.PoolResponse(backend="c", provider="cpu")
    assert serialize_response(r) == r.SerializeToString()
