"""Request building and response reading shared by the sync and asyncio clients, and the
channel options both use."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

import grpc
import numpy as np

from ._proto.poolserve.v1 import pooling_pb2 as pb
from .specs import Spec
from .tensors import (array_chunks, fill_tensor, from_header_and_bytes, from_tensor, join_chunks, nbytes_of,
                      tensor_header)

SERVICE = "poolserve.v1.Pooling"
DEFAULT_TARGET = "127.0.0.1:50051"
# as the server's default: a 256 MiB tensor and the rest of its message
DEFAULT_MAX_MESSAGE_BYTES = 257 << 20
# Inputs of at least this many bytes go through PoolChunked instead of Pool.  Chosen with
# bench/service_sizes.py on a 2-vCPU machine (README, "Service performance"): in two runs the
# paths were level at 2 MiB (chunks 13% faster in one, 8% slower in the other) and chunks won at
# every size from 4 MiB on (4 MiB: 16.3 vs 10.7 ms; 16 MiB: 60 vs 31 ms; 256 MiB: 3.0 vs 0.44 s).
DEFAULT_CHUNK_THRESHOLD = 4 << 20
DEFAULT_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class TLS:
    """TLS settings: PEM files (paths) or PEM bytes.  ``ca``: roots to trust (default: the
    system's); ``cert``/``key``: a client certificate for mutual TLS; ``server_name``: the name
    to check the server's certificate against, when it differs from the target's host."""

    ca: str | bytes | None = None
    cert: str | bytes | None = None
    key: str | bytes | None = None
    server_name: str | None = None


def _pem(v):
    if v is None or isinstance(v, bytes):
        return v
    with open(v, "rb") as f:
        return f.read()


def credentials(tls) -> tuple[grpc.ChannelCredentials | None, list]:
    """(credentials or None for plaintext, extra channel options)."""
    if tls is None or tls is False:
        return None, []
    if isinstance(tls, grpc.ChannelCredentials):
        return tls, []
    if tls is True:
        tls = TLS()
    creds = grpc.ssl_channel_credentials(_pem(tls.ca), _pem(tls.key), _pem(tls.cert))
    opts = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return creds, opts


def channel_target(target) -> str:
    """A gRPC target from one target string or several "host:port" addresses.

    Several addresses become one ``ipv4:``/``ipv6:`` target whose addresses the channel's load
    balancing policy spreads calls over.  gRPC takes such lists of IP addresses only; several
    replicas behind one name are "dns:///name:port" (e.g. a Kubernetes headless Service), which
    the channel resolves to all their addresses, and re-resolves when a connection drops.
    """
    if isinstance(target, str):
        return target
    addresses = [str(t).strip() for t in target]
    if not addresses:
        raise ValueError("no target: give a 'host:port', a 'dns:///name:port' or a list of IP addresses")
    if len(addresses) == 1:
        return addresses[0]
    v6 = [a.startswith("[") for a in addresses]
    for a in addresses:
        host = a[1:a.find("]")] if a.startswith("[") else a.rpartition(":")[0]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"several targets must be IP addresses with ports, not {a!r}: for replicas behind "
                             f"one DNS name use a single 'dns:///name:port' target") from None
    if any(v6) and not all(v6):
        raise ValueError("several targets must all be IPv4 or all IPv6 (gRPC's ipv4:/ipv6: targets)")
    return ("ipv6:" if v6[0] else "ipv4:") + ",".join(addresses)


def default_lb_policy(target: str) -> str:
    """round_robin where the target names several servers (an ipv4:/ipv6: list, or a dns:///
    name such as a Kubernetes headless Service), else gRPC's default, pick_first.

    Why not round_robin everywhere: with one address (say, one host whose --workers share a
    port) a dropped connection leaves round_robin's only subchannel in reconnect backoff, so
    the client's quick retries all fail; pick_first reconnects on the next call and lands on a
    live process at once.
    """
    if target.startswith("dns:"):
        return "round_robin"
    if target.startswith(("ipv4:", "ipv6:")) and "," in target:
        return "round_robin"
    return "pick_first"


def auth_metadata(token: str | None) -> tuple:
    """The bearer token header the server's --auth-token-file checks."""
    if not token:
        return ()
    if any(c in token for c in "\r\n") or token != token.strip():
        raise ValueError("a bearer token cannot hold whitespace at its ends or line breaks")
    return (("authorization", f"Bearer {token}"),)


def channel_options(retries: int, max_message_bytes: int, extra=(), lb_policy: str = "pick_first") -> list:
    """Message limits; the load balancing policy over the target's addresses; and retries of
    UNAVAILABLE by gRPC's own retry policy, so that a call that failed before any response
    (a replica that went away, a connection refused) is replayed, on another address where
    there is one.

    round_robin keeps a connection to every address of the target and spreads calls over
    the ready ones; pick_first sends every call to the first address that connects.
    """
    opts = [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]
    config: dict = {"loadBalancingConfig": [{lb_policy: {}}]}
    if retries > 0:
        config["methodConfig"] = [{
            "name": [{"service": SERVICE}],
            "retryPolicy": {
                "maxAttempts": min(5, retries + 1),  # gRPC caps attempts at 5
                "initialBackoff": "0.05s", "maxBackoff": "1s", "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"]}}]
        opts += [("grpc.enable_retries", 1),
                 # a call is replayable only while its request fits the retry buffer (default 256 KiB)
                 ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
                 ("grpc.retry_buffer_size", max_message_bytes)]
    else:
        opts.append(("grpc.enable_retries", 0))
    opts.append(("grpc.service_config", json.dumps(config)))
    return opts + list(extra)


def open_channel(grpc_module, target, tls, retries: int, max_message_bytes: int, options, lb_policy,
                 token, metadata):
    """The channel both clients open, from their constructor arguments.  ``grpc_module`` is grpc
    (sync) or grpc.aio; returns (channel, resolved target, call metadata)."""
    creds, tls_opts = credentials(tls)
    target = channel_target(target)
    opts = channel_options(retries, max_message_bytes, list(options) + tls_opts,
                           lb_policy or default_lb_policy(target))
    channel = (grpc_module.secure_channel(target, creds, options=opts) if creds
               else grpc_module.insecure_channel(target, options=opts))
    return channel, target, auth_metadata(token) + tuple(metadata)


def make_spec(spec, kwargs) -> Spec:
    if spec is None:
        return Spec(**kwargs)
    if kwargs:
        if isinstance(spec, Spec):
            return spec.replace(**kwargs)
        raise TypeError("pass either a PoolSpec message or keyword arguments, not both")
    return spec


def spec_proto(spec, rank: int) -> pb.PoolSpec:
    return spec if isinstance(spec, pb.PoolSpec) else spec.to_proto(rank)


def rank_of(x: np.ndarray) -> int:
    return max(0, x.ndim - 2)


def pool_request(x, spec, layout: str, with_spec: bool = True) -> pb.PoolRequest:
    x = np.asarray(x)
    req = pb.PoolRequest()
    fill_tensor(req.input, x, layout)  # in place: a built Tensor passed in would be copied again
    if with_spec:
        req.spec.CopyFrom(spec_proto(spec, rank_of(x)))
    return req


def pool_result(resp: pb.PoolResponse, return_indices: bool):
    y = from_tensor(resp.output, "output")
    if return_indices:
        return y, from_tensor(resp.indices, "indices")
    return y


def backward_request(grad_output, spec, layout: str, *, input_shape=None, indices=None,
                     input=None) -> pb.PoolBackwardRequest:
    grad_output = np.asarray(grad_output)
    req = pb.PoolBackwardRequest(spec=spec_proto(spec, rank_of(grad_output)))
    fill_tensor(req.grad_output, grad_output, layout)  # in place, as in pool_request
    if input_shape is not None:
        req.input_shape.extend(int(d) for d in input_shape)
    if indices is not None:
        fill_tensor(req.indices, np.asarray(indices), layout)
    if input is not None:
        fill_tensor(req.input, np.asarray(input), layout)
    return req


def wants_indices(spec) -> bool:
    return bool(spec.return_indices)


def chunked_requests(x, spec, layout: str, chunk_bytes: int):
    """PoolChunked's request stream: the header (spec, dtype, shape, layout), then the data."""
    x = np.asarray(x)
    header = pb.PoolRequest(input=tensor_header(x, layout), spec=spec_proto(spec, rank_of(x)))
    yield pb.PoolChunkedRequest(header=header)
    for piece in array_chunks(x, chunk_bytes):
        yield pb.PoolChunkedRequest(chunk=piece)


class ChunkedReader:
    """Reads PoolChunked's response stream: feed() each message, result() at the end."""

    def __init__(self, return_indices: bool):
        self.return_indices = return_indices
        self.header = None
        self.chunks: list[bytes] = []

    def feed(self, msg: pb.PoolChunkedResponse) -> None:
        if self.header is None:
            if not msg.HasField("header"):
                raise ValueError("PoolChunked: the server's first message carries no header")
            self.header = msg.header
        else:
            self.chunks.append(msg.chunk)  # read once: each read of a bytes field copies

    def result(self):
        if self.header is None:
            raise ValueError("PoolChunked: the server sent no answer")
        h = self.header
        tensors = [(h.output, "output")] + ([(h.indices, "indices")] if self.return_indices else [])
        pieces = join_chunks(self.chunks, [nbytes_of(t, f) for t, f in tensors])
        arrays = [from_header_and_bytes(t, b, f) for (t, f), b in zip(tensors, pieces)]
        return (arrays[0], arrays[1]) if self.return_indices else arrays[0]
