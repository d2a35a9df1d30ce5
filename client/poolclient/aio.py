"""The asyncio client: the same calls as :class:`poolclient.PoolClient`, awaited.

    async with AsyncPoolClient("127.0.0.1:50051") as c:
        y = await c.max_pool(x, 2)
        async for y in c.pool_many(xs, mode="avg", kernel_size=2):
            ...
"""

from __future__ import annotations

import grpc
import grpc.aio
import numpy as np

from . import _calls as calls
from ._proto.poolserve.v1 import pooling_pb2 as pb
from ._proto.poolserve.v1 import pooling_pb2_grpc as pb_grpc
from .errors import from_rpc_error
from .specs import Spec
from .tensors import from_tensor


class AsyncPoolClient:
    """Arguments as :class:`poolclient.PoolClient`.  Create it inside the event loop."""

    def __init__(self, target: str = calls.DEFAULT_TARGET, *, timeout: float | None = 60.0, tls=None,
                 retries: int = 3, max_message_bytes: int = calls.DEFAULT_MAX_MESSAGE_BYTES,
                 options=(), metadata=(), token: str | None = None, lb_policy: str | None = None,
                 chunk_threshold: int | None = calls.DEFAULT_CHUNK_THRESHOLD,
                 chunk_bytes: int = calls.DEFAULT_CHUNK_BYTES):
        self._channel, target, metadata = calls.open_channel(grpc.aio, target, tls, retries, max_message_bytes,
                                                             options, lb_policy, token, metadata)
        self._stub = pb_grpc.PoolingStub(self._channel)
        self.target, self.timeout, self.metadata = target, timeout, tuple(metadata)
        self.chunk_threshold, self.chunk_bytes = chunk_threshold, int(chunk_bytes)
        if self.chunk_bytes < 1:
            raise ValueError(f"chunk_bytes={chunk_bytes}: must be >= 1")

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncPoolClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, method, request, timeout, metadata):
        try:
            return await method(request, timeout=self.timeout if timeout is None else timeout,
                                metadata=self.metadata + tuple(metadata or ()))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def pool(self, x: np.ndarray, spec: Spec | pb.PoolSpec | None = None, *,
                   layout: str = "channels_first", timeout=None, metadata=None, **kwargs):
        spec = calls.make_spec(spec, kwargs)
        x = np.asarray(x)
        if self.chunk_threshold is not None and x.nbytes >= self.chunk_threshold:
            return await self.pool_chunked(x, spec, layout=layout, timeout=timeout, metadata=metadata)
        resp = await self._call(self._stub.Pool, calls.pool_request(x, spec, layout), timeout, metadata)
        return calls.pool_result(resp, calls.wants_indices(spec))

    async def pool_chunked(self, x: np.ndarray, spec: Spec | pb.PoolSpec | None = None, *,
                           layout: str = "channels_first", timeout=None, metadata=None, **kwargs):
        """pool() through PoolChunked whatever the size (pool() picks it by itself for big inputs)."""
        spec = calls.make_spec(spec, kwargs)
        reader = calls.ChunkedReader(calls.wants_indices(spec))
        call = self._stub.PoolChunked(calls.chunked_requests(x, spec, layout, self.chunk_bytes),
                                      timeout=self.timeout if timeout is None else timeout,
                                      metadata=self.metadata + tuple(metadata or ()))
        try:
            async for msg in call:
                reader.feed(msg)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return reader.result()

    async def max_pool(self, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                       return_indices=False, **kw):
        return await self.pool(x, Spec("max", kernel_size, stride, padding, dilation=dilation, ceil_mode=ceil_mode,
                                       return_indices=return_indices), **kw)

    async def avg_pool(self, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=False,
                       dilation=1, **kw):
        return await self.pool(x, Spec("avg", kernel_size, stride, padding, dilation=dilation, ceil_mode=ceil_mode,
                                       count_include_pad=count_include_pad), **kw)

    async def lp_pool(self, x, p, kernel_size, stride=None, ceil_mode=False, padding=0, dilation=1, **kw):
        return await self.pool(x, Spec("lp", kernel_size, stride, padding, dilation=dilation, ceil_mode=ceil_mode,
                                       p=p), **kw)

    async def pool_many(self, inputs, spec: Spec | pb.PoolSpec | None = None, *,
                        layout: str = "channels_first", timeout=None, metadata=None, **kwargs):
        """Async generator over one PoolStream call; ``inputs`` may be a sync or async iterable."""
        default = calls.make_spec(spec, kwargs) if (spec is not None or kwargs) else None
        order: list[bool] = []

        def one(item, last):
            x, s = item if isinstance(item, tuple) else (item, default)
            if s is None:
                raise ValueError("pool_many needs a spec, for all inputs or with each one")
            x = np.asarray(x)
            key = (s, calls.rank_of(x))
            order.append(calls.wants_indices(s))
            return calls.pool_request(x, s, layout, with_spec=key != last), key

        async def requests():
            last = None
            if hasattr(inputs, "__aiter__"):
                async for item in inputs:
                    req, last = one(item, last)
                    yield req
            else:
                for item in inputs:
                    req, last = one(item, last)
                    yield req

        call = self._stub.PoolStream(requests(), timeout=self.timeout if timeout is None else timeout,
                                     metadata=self.metadata + tuple(metadata or ()))
        try:
            i = 0
            async for resp in call:
                yield calls.pool_result(resp, order[i])
                i += 1
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def pool_backward(self, grad_output, spec: Spec | pb.PoolSpec | None = None, *, input_shape=None,
                            indices=None, input=None, layout: str = "channels_first", timeout=None,
                            metadata=None, **kwargs) -> np.ndarray:
        spec = calls.make_spec(spec, kwargs)
        req = calls.backward_request(grad_output, spec, layout, input_shape=input_shape, indices=indices,
                                     input=input)
        resp = await self._call(self._stub.PoolBackward, req, timeout, metadata)
        return from_tensor(resp.grad_input, "grad_input")

    async def max_pool_backward(self, grad_output, kernel_size, stride=None, padding=0, dilation=1,
                                ceil_mode=False, *, indices=None, input=None, input_shape=None, **kw):
        return await self.pool_backward(grad_output, Spec("max", kernel_size, stride, padding, dilation=dilation,
                                                          ceil_mode=ceil_mode),
                                        input_shape=input_shape, indices=indices, input=input, **kw)

    async def avg_pool_backward(self, grad_output, input_shape, kernel_size, stride=None, padding=0,
                                ceil_mode=False, count_include_pad=False, dilation=1, **kw):
        return await self.pool_backward(grad_output, Spec("avg", kernel_size, stride, padding, dilation=dilation,
                                                          ceil_mode=ceil_mode, count_include_pad=count_include_pad),
                                        input_shape=input_shape, **kw)

    async def lp_pool_backward(self, grad_output, input, p, kernel_size, stride=None, ceil_mode=False, padding=0,
                               dilation=1, **kw):
        return await self.pool_backward(grad_output, Spec("lp", kernel_size, stride, padding, dilation=dilation,
                                                          ceil_mode=ceil_mode, p=p), input=input, **kw)

    async def server_info(self, *, timeout=None) -> pb.ServerInfo:
        return await self._call(self._stub.GetServerInfo, pb.ServerInfoRequest(), timeout, None)
