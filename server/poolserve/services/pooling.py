"""The native API, poolserve.v1.Pooling: decode, hand to the dispatcher, encode.  Thin on purpose."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np

from poolclient._proto.poolserve.v1 import pooling_pb2 as pb
from poolclient._proto.poolserve.v1 import pooling_pb2_grpc as pb_grpc
import grpc

from poolclient.tensors import (DTYPE_BY_NUMPY, TensorError, array_chunks, check_header, fill_header, fill_tensor,
                                tensor_header)

from .. import __version__
from ..dispatch import Dispatcher
from ..errors import LimitExceeded
from ..spec import DTYPES_BY_MODE, MAX_SPATIAL_RANK, SpecError
from .convert import ENUM_BY_MODE, from_tensor, layout_of, spec_from_proto
from .scope import Scope
from .wire import PoolRequestCodec, SplitResponse, serialize_response, unsplit

# PoolChunked answers in pieces of this size: big enough that the per-message cost is small, small
# enough that protobuf never handles one large bytes field (DESIGN.md: 1 MiB chunks ~4x faster
# than one 16 MiB message).
RESPONSE_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ServerFacts:
    """What GetServerInfo reports beyond the dispatcher: set once by server.py."""

    max_message_bytes: int
    max_concurrent_rpcs: int
    worker_threads: int
    worker_index: int = 0
    workers: int = 1


class PoolingServicer(pb_grpc.PoolingServicer):
    def __init__(self, dispatcher: Dispatcher, facts: ServerFacts):
        self.dispatcher = dispatcher
        self.facts = facts

    def _decode(self, t: pb.Tensor, field: str, data=None):
        return from_tensor(t, field, max_elements=self.dispatcher.max_elements, data=data)

    def _forward(self, scope: Scope, request: pb.PoolRequest, data, spec, backend: str, provider: str,
                 index: int | None = None):
        """Run one PoolRequest with an already-built spec; ``data`` is its input's data when the
        codec cut it out of the message (wire.py), else None.

        Returns (response, bytes in, bytes out, op, the backend that ran it).  The response's
        tensors carry their header only; wire.serialize_response appends the arrays' bytes."""
        field = "input" if index is None else f"requests[{index}].input"
        if not request.HasField("input"):
            raise SpecError(field, None, "is required")
        x = self._decode(request.input, field, data)
        scope.shape = x.shape
        scope.check_deadline()
        r = self.dispatcher.forward(spec, x, backend=backend, provider=provider)
        out = pb.PoolResponse(backend=r.backend, provider=r.provider)
        arrays = {"output": fill_header(out.output, r.output, spec.layout)}
        if r.indices is not None:
            arrays["indices"] = fill_header(out.indices, r.indices, spec.layout)
        nbytes_out = r.output.nbytes + (r.indices.nbytes if r.indices is not None else 0)
        return SplitResponse(out, arrays), x.nbytes, nbytes_out, spec.mode, r.backend

    def Pool(self, request, context):
        request, data = unsplit(request)
        with Scope("Pool", context) as s:
            if not request.HasField("spec"):
                raise SpecError("spec", None, "is required")
            spec = spec_from_proto(request.spec, layout_of(request.input))
            s.op = spec.mode
            out, s.bytes_in, s.bytes_out, _, s.backend = self._forward(s, request, data, spec, request.spec.backend,
                                                                       request.spec.provider)
            return out

    def PoolStream(self, request_iterator, context):
        with Scope("PoolStream", context) as s:
            spec, backend, provider = None, "", ""
            for i, request in enumerate(request_iterator):
                t0 = time.perf_counter()
                request, data = unsplit(request)
                try:
                    if request.HasField("spec") or spec is None:
                        if not request.HasField("spec"):
                            raise SpecError(f"requests[{i}].spec", None, "is required on the first request")
                        # the spec is parsed and validated once, then reused for later requests
                        spec = spec_from_proto(request.spec, layout_of(request.input))
                        backend, provider = request.spec.backend, request.spec.provider
                        s.op = spec.mode
                    elif layout_of(request.input) != spec.layout:
                        spec = spec.replace(layout=layout_of(request.input))
                    # `backend` stays what the caller asked for ("" = policy), not what ran last
                    out, nin, nout, op, ran = self._forward(s, request, data, spec, backend, provider, index=i)
                except SpecError as e:
                    raise SpecError(e.field if e.field.startswith("requests[") else f"requests[{i}].{e.field}",
                                    e.value, str(e).split(": ", 1)[-1]) from None
                s.record("OK", op=op, backend=ran, bytes_in=nin, bytes_out=nout, t0=t0)
                yield out

    def PoolChunked(self, request_iterator, context):
        with Scope("PoolChunked", context) as s:
            it = iter(request_iterator)
            first = next(it, None)
            if first is None or not first.HasField("header"):
                raise SpecError("header", None, "the first message must carry the header")
            head = first.header
            if not head.HasField("spec"):
                raise SpecError("header.spec", None, "is required")
            if not head.HasField("input"):
                raise SpecError("header.input", None, "is required")
            if first.chunk or head.input.data:
                raise SpecError("header.input.data", f"{len(head.input.data) + len(first.chunk)} bytes",
                                "must be empty: the data follows in chunk messages")
            spec = spec_from_proto(head.spec, layout_of(head.input))
            s.op = spec.mode
            # header checks before any data is read or any buffer allocated: the element limit
            # here, then the byte limit that Pool's transport enforces, then the whole request's
            # checks and backend choice (the Dispatcher's own, as forward() will run again)
            dtype, shape = check_header(head.input, "input", max_elements=self.dispatcher.max_elements)
            s.shape = shape
            expected = math.prod(shape) * dtype.itemsize
            if expected > self.facts.max_message_bytes:
                raise LimitExceeded("input.shape", list(shape), f"{expected} bytes is over this server's "
                                    f"message limit of {self.facts.max_message_bytes}")
            backend, provider = head.spec.backend, head.spec.provider
            self.dispatcher.check_forward(spec, shape, dtype, backend=backend, provider=provider)
            # np.empty, not bytearray: no zero-fill of up to 256 MiB that the chunks overwrite anyway
            buf = np.empty(expected, np.uint8)
            view = memoryview(buf)
            filled = 0
            for i, msg in enumerate(it, start=1):
                if msg.HasField("header"):
                    raise SpecError(f"messages[{i}].header", None, "only the first message may carry a header")
                chunk = msg.chunk  # each read of a bytes field copies: read once
                if filled + len(chunk) > expected:
                    raise TensorError(f"messages[{i}].chunk", f"{filled + len(chunk)} bytes",
                                      f"the stream sends more than the {expected} bytes that shape {list(shape)} "
                                      f"of {dtype.name} declares")
                view[filled:filled + len(chunk)] = chunk
                filled += len(chunk)
            if filled != expected:
                raise TensorError("input.data", f"{filled} bytes", f"the stream ended before the {expected} bytes "
                                  f"that shape {list(shape)} of {dtype.name} declares")
            x = buf.view(dtype).reshape(shape)
            if not dtype.isnative:
                x = x.astype(dtype.newbyteorder("="))
            s.bytes_in = expected
            s.check_deadline()
            r = self.dispatcher.forward(spec, x, backend=backend, provider=provider)
            s.backend = r.backend
            header = pb.PoolResponse(output=tensor_header(r.output, spec.layout), backend=r.backend,
                                     provider=r.provider)
            if r.indices is not None:
                header.indices.CopyFrom(tensor_header(r.indices, spec.layout))
            yield pb.PoolChunkedResponse(header=header)
            for a in (r.output, r.indices):
                if a is None:
                    continue
                s.bytes_out += a.nbytes
                for piece in array_chunks(a, RESPONSE_CHUNK_BYTES):
                    yield pb.PoolChunkedResponse(chunk=piece)

    def PoolBackward(self, request, context):
        with Scope("PoolBackward", context) as s:
            if not request.HasField("grad_output"):
                raise SpecError("grad_output", None, "is required")
            if not request.HasField("spec"):
                raise SpecError("spec", None, "is required")
            layout = layout_of(request.grad_output)
            spec = spec_from_proto(request.spec, layout)
            s.op = spec.mode
            dy = self._decode(request.grad_output, "grad_output")
            x = self._decode(request.input, "input") if request.HasField("input") else None
            ind = self._decode(request.indices, "indices") if request.HasField("indices") else None
            for name, t in (("input", request.input if x is not None else None),
                            ("indices", request.indices if ind is not None else None)):
                if t is not None and layout_of(t) != layout:
                    raise SpecError(f"{name}.layout", pb.Layout.Name(t.layout), "must equal grad_output's layout")
            s.shape = tuple(request.input_shape) or (x.shape if x is not None else ())
            s.bytes_in = dy.nbytes + (x.nbytes if x is not None else 0) + (ind.nbytes if ind is not None else 0)
            s.check_deadline()
            r = self.dispatcher.backward(spec, tuple(request.input_shape), dy, x=x, indices=ind,
                                         backend=request.spec.backend, provider=request.spec.provider)
            s.backend, s.bytes_out = r.backend, r.output.nbytes
            out = pb.PoolBackwardResponse(backend=r.backend, provider=r.provider)
            fill_tensor(out.grad_input, r.output, layout)
            return out

    def GetServerInfo(self, request, context):
        with Scope("GetServerInfo", context):
            d = self.dispatcher.describe()
            f = self.facts
            return pb.ServerInfo(
                version=__version__, pid=os.getpid(), worker_index=f.worker_index, workers=f.workers,
                default_backend=d["default_backend"],
                backends=[pb.BackendInfo(**b) for b in d["backends"]],
                dtypes=[pb.ModeDTypes(mode=ENUM_BY_MODE[m], dtypes=[DTYPE_BY_NUMPY[t] for t in ts])
                        for m, ts in DTYPES_BY_MODE.items()],
                limits=pb.Limits(max_message_bytes=f.max_message_bytes, max_elements=d["max_elements"],
                                 max_concurrent_rpcs=f.max_concurrent_rpcs, max_spatial_rank=MAX_SPATIAL_RANK),
                worker_threads=f.worker_threads, cpu_count=os.cpu_count() or 0,
                policy=[pb.PolicyEntry(mode=ENUM_BY_MODE[e["mode"]], window=e["window"],
                                       dtype=DTYPE_BY_NUMPY[e["dtype"]], min_bytes=e["min_bytes"],
                                       max_bytes=e["max_bytes"], backend=e["backend"], micros=e["micros"])
                        for e in d["policy"] if e["mode"] in ENUM_BY_MODE and e["dtype"] in DTYPE_BY_NUMPY],
                policy_source=d["policy_source"])


def add_pooling_servicer(servicer: PoolingServicer, server: grpc.Server) -> None:
    """pooling_pb2_grpc.add_PoolingServicer_to_server, except that Pool and PoolStream use the
    codec of wire.py (the tensor bytes bypass protobuf); the other RPCs use protobuf's own."""
    codec = PoolRequestCodec()
    handlers = {
        "Pool": grpc.unary_unary_rpc_method_handler(
            servicer.Pool, request_deserializer=codec.parse, response_serializer=serialize_response),
        "PoolStream": grpc.stream_stream_rpc_method_handler(
            servicer.PoolStream, request_deserializer=codec.parse, response_serializer=serialize_response),
        "PoolBackward": grpc.unary_unary_rpc_method_handler(
            servicer.PoolBackward, request_deserializer=pb.PoolBackwardRequest.FromString,
            response_serializer=pb.PoolBackwardResponse.SerializeToString),
        "PoolChunked": grpc.stream_stream_rpc_method_handler(
            servicer.PoolChunked, request_deserializer=pb.PoolChunkedRequest.FromString,
            response_serializer=pb.PoolChunkedResponse.SerializeToString),
        "GetServerInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetServerInfo, request_deserializer=pb.ServerInfoRequest.FromString,
            response_serializer=pb.ServerInfo.SerializeToString),
    }
    name = pb.DESCRIPTOR.services_by_name["Pooling"].full_name
    assert set(handlers) == set(pb.DESCRIPTOR.services_by_name["Pooling"].methods_by_name), "an RPC without a handler"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)
