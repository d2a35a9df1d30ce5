"""Transport security and authentication for `poolserve serve`: TLS, mutual TLS, bearer tokens.

What is checked where (SECURITY.md has the whole model):
- TLS (--tls-cert, --tls-key): the channel is encrypted and the server proves its identity.
- Mutual TLS (--tls-client-ca): the TLS handshake itself refuses a client without a
  certificate signed by one of these CAs; no call reaches any handler, health included.
- Bearer token (--auth-token-file): every call but the health service's must carry
  ``authorization: Bearer <token>`` matching one of the file's tokens, or is answered
  UNAUTHENTICATED before its handler runs and before its request is parsed.  Health stays
  open so that probes (Docker HEALTHCHECK, the kubelet's gRPC probe) need no secret; it says
  nothing but SERVING or NOT_SERVING.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

# Methods any caller may use without a token: only the health service.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
# Longer than any sane token, short enough that comparing costs nothing.
MAX_TOKEN_BYTES = 4096


class ConfigError(ValueError):
    """A security flag that cannot work (a missing file, an empty token list)."""


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} {path!r}: {e.strerror or e}") from None
    if not data.strip():
        raise ConfigError(f"{what} {path!r} is empty")
    return data


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS from PEM files; with ``client_ca``, mutual TLS: clients must present a certificate
    that chains to one of those CAs, or the handshake fails."""
    pair = (_read(key, "--tls-key"), _read(cert, "--tls-cert"))
    roots = _read(client_ca, "--tls-client-ca") if client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=roots, require_client_auth=roots is not None)


def read_tokens(path: str) -> list[bytes]:
    """One token per line (several allow rotation: add the new one, roll the clients, drop the
    old one); blank lines and lines starting with # are ignored."""
    tokens = []
    for line in _read(path, "--auth-token-file").splitlines():
        line = line.strip()
        if line and not line.startswith(b"#"):
            if len(line) > MAX_TOKEN_BYTES:
                raise ConfigError(f"--auth-token-file {path!r}: a token longer than {MAX_TOKEN_BYTES} bytes")
            tokens.append(line)
    if not tokens:
        raise ConfigError(f"--auth-token-file {path!r} holds no token")
    return tokens


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Answers UNAUTHENTICATED to any call without a valid ``authorization: Bearer`` header."""

    def __init__(self, tokens: list[bytes], open_prefixes=OPEN_METHOD_PREFIXES):
        self._tokens = list(tokens)
        self._open = tuple(open_prefixes)

    def _valid(self, metadata) -> bool:
        presented = None
        for key, value in metadata or ():
            if key == "authorization":  # gRPC lower-cases metadata keys
                presented = value.encode("utf-8", "replace") if isinstance(value, str) else bytes(value)
                break
        if presented is None or not presented[:7].lower() == b"bearer ":
            return False
        presented = presented[7:].strip()
        # Constant time in the token's content, and every configured token is compared (no
        # early exit), so timing tells an attacker neither how much of a guess was right nor
        # which token matched.
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(presented, token)
        return ok

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith(self._open) or self._valid(handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:  # an unknown method: let gRPC answer UNIMPLEMENTED as usual
            return None
        return _refusal(handler)


def _deny(request_or_iterator, context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token (metadata 'authorization')")


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` (so the request stream is framed as the client
    sends it) that refuses the call without reading its request."""
    kw = {"request_deserializer": None, "response_serializer": None}  # never parse untrusted bytes
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_deny, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_deny, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_deny, **kw)
    return grpc.unary_unary_rpc_method_handler(_deny, **kw)
