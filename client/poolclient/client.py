"""The synchronous client.

    from poolclient import PoolClient
    with PoolClient("127.0.0.1:50051") as c:
        y = c.max_pool(x, kernel_size=2)

Arrays in are any numpy arrays of a dtype the server takes; arrays out are read-only views of
the received bytes (no copy; ``.copy()`` one to write to it).
"""

from __future__ import annotations

import grpc
import numpy as np

from . import _calls as calls
from ._proto.poolserve.v1 import pooling_pb2 as pb
from ._proto.poolserve.v1 import pooling_pb2_grpc as pb_grpc
from .errors import from_rpc_error
from .specs import Spec
from .tensors import from_tensor


class PoolClient:
    """A connection to a poolserve server.

    target:    "host:port" (any gRPC target: "dns:///name:port", "ipv4:a:p,b:p", ...), or a list
               of "ip:port" addresses: calls are spread over all of the target's addresses.
    timeout:   seconds per call (a deadline); None waits indefinitely.
    tls:       None/False plaintext; True system roots; a :class:`poolclient.TLS`; or
               grpc.ChannelCredentials.
    retries:   how many times a call that failed with UNAVAILABLE before any response is
               replayed by gRPC's retry policy (0 to 4).
    max_message_bytes: the largest message sent or received.
    options:   more grpc channel options, e.g. [("grpc.lb_policy_name", "round_robin")].
    metadata:  sent with every call, e.g. [("x-request-id", "...")].
    token:     a bearer token for a server started with --auth-token-file (sent as
               "authorization: Bearer ..."; use TLS, or it crosses the network in the clear).
    lb_policy: how calls are spread over the target's addresses: "round_robin" (the default
               for a list of addresses or a "dns:///" name: every replica gets a share) or
               "pick_first" (the default for one "host:port": one connection).
    chunk_threshold: inputs of at least this many bytes are sent with PoolChunked, as a stream of
               chunk_bytes pieces, and answered in pieces: faster than one big message from a few
               MiB up (see README, "Service performance").  None: always one message (Pool).
    """

    def __init__(self, target: str = calls.DEFAULT_TARGET, *, timeout: float | None = 60.0, tls=None,
                 retries: int = 3, max_message_bytes: int = calls.DEFAULT_MAX_MESSAGE_BYTES,
                 options=(), metadata=(), token: str | None = None, lb_policy: str | None = None,
                 chunk_threshold: int | None = calls.DEFAULT_CHUNK_THRESHOLD,
                 chunk_bytes: int = calls.DEFAULT_CHUNK_BYTES):
        self._channel, target, metadata = calls.open_channel(grpc, target, tls, retries, max_message_bytes,
                                                             options, lb_policy, token, metadata)
        self._stub = pb_grpc.PoolingStub(self._channel)
        self.target, self.timeout, self.metadata = target, timeout, tuple(metadata)
        self.chunk_threshold, self.chunk_bytes = chunk_threshold, int(chunk_bytes)
        if self.chunk_bytes < 1:
            raise ValueError(f"chunk_bytes={chunk_bytes}: must be >= 1")

    # -- plumbing -------------------------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "PoolClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, timeout, metadata):
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout,
                          metadata=self.metadata + tuple(metadata or ()))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    # -- forward ---------------------------------------------------------------------------------
    def pool(self, x: np.ndarray, spec: Spec | pb.PoolSpec | None = None, *, layout: str = "channels_first",
             timeout: float | None = None, metadata=None, **kwargs):
        """Pool ``x``: y, or (y, indices) when the spec asks for indices.  ``spec`` is a
        :class:`Spec`, a wire PoolSpec, or given as keyword arguments (mode=..., kernel_size=...)."""
        spec = calls.make_spec(spec, kwargs)
        x = np.asarray(x)
        if self.chunk_threshold is not None and x.nbytes >= self.chunk_threshold:
            return self.pool_chunked(x, spec, layout=layout, timeout=timeout, metadata=metadata)
        resp = self._call(self._stub.Pool, calls.pool_request(x, spec, layout), timeout, metadata)
        return calls.pool_result(resp, calls.wants_indices(spec))

    def pool_chunked(self, x: np.ndarray, spec: Spec | pb.PoolSpec | None = None, *,
                     layout: str = "channels_first", timeout: float | None = None, metadata=None, **kwargs):
        """pool() through PoolChunked whatever the size (pool() picks it by itself for big inputs)."""
        spec = calls.make_spec(spec, kwargs)
        reader = calls.ChunkedReader(calls.wants_indices(spec))
        try:
            for msg in self._stub.PoolChunked(calls.chunked_requests(x, spec, layout, self.chunk_bytes),
                                              timeout=self.timeout if timeout is None else timeout,
                                              metadata=self.metadata + tuple(metadata or ())):
                reader.feed(msg)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return reader.result()

    def max_pool(self, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 return_indices=False, **kw):
        """torch.nn.functional.max_pool{1,2,3}d, by the input's rank."""
        return self.pool(x, Spec("max", kernel_size, stride, padding, dilation=dilation, ceil_mode=ceil_mode,
                                 return_indices=return_indices), **kw)

    def avg_pool(self, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=False,
                 dilation=1, **kw):
        """torch.nn.functional.avg_pool{1,2,3}d; note count_include_pad defaults to False here."""
        return self.pool(x, Spec("avg", kernel_size, stride, padding, dilation=dilation, ceil_mode=ceil_mode,
                                 count_include_pad=count_include_pad), **kw)

    def lp_pool(self, x, p, kernel_size, stride=None, ceil_mode=False, padding=0, dilation=1, **kw):
        """torch.nn.functional.lp_pool{1,2,3}d (p is torch's norm_type)."""
        return self.pool(x, Spec("lp", kernel_size, stride, padding, dilation=dilation, ceil_mode=ceil_mode, p=p),
                         **kw)

    def pool_many(self, inputs, spec: Spec | pb.PoolSpec | None = None, *, layout: str = "channels_first",
                  timeout: float | None = None, metadata=None, **kwargs):
        """Pool many tensors over one PoolStream call; yields results in order, as they come.

        ``inputs`` yields arrays (pooled with ``spec``) or (array, spec) pairs.  The spec goes
        on the wire only when it changes, so the server parses and checks it once.  The
        timeout covers the whole stream.
        """
        default = calls.make_spec(spec, kwargs) if (spec is not None or kwargs) else None
        order: list[bool] = []  # return_indices of each request sent, for reading its answer

        def requests():
            last = None
            for item in inputs:
                x, s = item if isinstance(item, tuple) else (item, default)
                if s is None:
                    raise ValueError("pool_many needs a spec, for all inputs or with each one")
                x = np.asarray(x)
                key = (s, calls.rank_of(x))  # by value: equal specs are sent once
                req = calls.pool_request(x, s, layout, with_spec=key != last)
                last = key
                order.append(calls.wants_indices(s))
                yield req

        try:
            for i, resp in enumerate(self._stub.PoolStream(
                    requests(), timeout=self.timeout if timeout is None else timeout,
                    metadata=self.metadata + tuple(metadata or ()))):
                yield calls.pool_result(resp, order[i])
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    # -- backward --------------------------------------------------------------------------------
    def pool_backward(self, grad_output, spec: Spec | pb.PoolSpec | None = None, *, input_shape=None,
                      indices=None, input=None, layout: str = "channels_first", timeout=None, metadata=None,
                      **kwargs) -> np.ndarray:
        """Gradient of the input given the gradient of the output (the forward's spec)."""
        spec = calls.make_spec(spec, kwargs)
        req = calls.backward_request(grad_output, spec, layout, input_shape=input_shape, indices=indices,
                                     input=input)
        resp = self._call(self._stub.PoolBackward, req, timeout, metadata)
        return from_tensor(resp.grad_input, "grad_input")

    def max_pool_backward(self, grad_output, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
                          indices=None, input=None, input_shape=None, **kw) -> np.ndarray:
        """Routes each gradient to its window's argmax: pass the forward's ``indices`` (with
        ``input_shape``) or its ``input`` (the argmax is recomputed)."""
        return self.pool_backward(grad_output, Spec("max", kernel_size, stride, padding, dilation=dilation,
                                                    ceil_mode=ceil_mode),
                                  input_shape=input_shape, indices=indices, input=input, **kw)

    def avg_pool_backward(self, grad_output, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                          count_include_pad=False, dilation=1, **kw) -> np.ndarray:
        return self.pool_backward(grad_output, Spec("avg", kernel_size, stride, padding, dilation=dilation,
                                                    ceil_mode=ceil_mode, count_include_pad=count_include_pad),
                                  input_shape=input_shape, **kw)

    def lp_pool_backward(self, grad_output, input, p, kernel_size, stride=None, ceil_mode=False, padding=0,
                         dilation=1, **kw) -> np.ndarray:
        return self.pool_backward(grad_output, Spec("lp", kernel_size, stride, padding, dilation=dilation,
                                                    ceil_mode=ceil_mode, p=p), input=input, **kw)

    # -- about the server -------------------------------------------------------------------------
    def server_info(self, *, timeout=None) -> pb.ServerInfo:
        """Version, backends and providers, dtypes, limits, threads and the answering pid."""
        return self._call(self._stub.GetServerInfo, pb.ServerInfoRequest(), timeout, None)
