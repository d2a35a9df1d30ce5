"""Malformed protobuf is the caller's mistake: INVALID_ARGUMENT, not grpcio's INTERNAL.

grpcio parses each request with the handler's deserializer before any servicer code runs, and
when that raises it answers INTERNAL ("Exception deserializing request!") and logs a traceback
at ERROR -- so anyone can fill the server's error log and alert on INTERNAL with a few bytes.
This interceptor gives every handler a deserializer that cannot raise: a message that does not
parse becomes a marker, and the call is answered INVALID_ARGUMENT, naming the message type,
before the servicer sees it.  It applies to every service on the server (native, OIP, health,
reflection), since none of them can do anything with bytes that are not their message.
"""

from __future__ import annotations

import grpc


class _Malformed:
    __slots__ = ("error",)

    def __init__(self, error: str):
        self.error = error


def _message_name(deserializer) -> str:
    owner = getattr(deserializer, "__self__", None)  # FooRequest.FromString -> FooRequest
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", None) or "request"


def _safe(deserializer):
    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as e:  # DecodeError, and anything else a parser may raise on junk
            return _Malformed(f"{type(e).__name__}: {e}")
    return parse


def _message(name: str, bad: _Malformed) -> str:
    return f"request is not a valid {name} message ({bad.error})"


class MalformedRequestInterceptor(grpc.ServerInterceptor):
    def __init__(self):
        self._wrapped: dict = {}  # method -> wrapped handler: handlers are fixed at start-up

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = continuation(handler_call_details)
            if handler is None:  # unknown method: UNIMPLEMENTED, and nothing to cache
                return None
            wrapped = self._wrapped[method] = self._wrap(handler)
        return wrapped

    @staticmethod
    def _wrap(handler):
        if handler.request_deserializer is None:
            return handler
        name = _message_name(handler.request_deserializer)
        kw = {"request_deserializer": _safe(handler.request_deserializer),
              "response_serializer": handler.response_serializer}

        if not handler.request_streaming:
            behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary

            def unary(request, context):
                if isinstance(request, _Malformed):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(name, request))
                return behavior(request, context)

            if handler.response_streaming:
                def unary_stream(request, context):
                    if isinstance(request, _Malformed):
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(name, request))
                    yield from behavior(request, context)
                return grpc.unary_stream_rpc_method_handler(unary_stream, **kw)
            return grpc.unary_unary_rpc_method_handler(unary, **kw)

        # A request stream: the servicer is already running when a bad message arrives.  Its
        # request stream ends there (it answers what came before, as for a client that closed
        # the stream), and then the call ends INVALID_ARGUMENT.  Ending the stream rather than
        # raising into the servicer keeps this independent of how each servicer treats errors.
        behavior = handler.stream_stream if handler.response_streaming else handler.stream_unary

        def checked(requests, found: list):
            for i, request in enumerate(requests):
                if isinstance(request, _Malformed):
                    found.append(f"requests[{i}]: " + _message(name, request))
                    return
                yield request

        if handler.response_streaming:
            def stream_stream(requests, context):
                found: list = []
                yield from behavior(checked(requests, found), context)
                if found:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, found[0])
            return grpc.stream_stream_rpc_method_handler(stream_stream, **kw)

        def stream_unary(requests, context):
            found: list = []
            response = behavior(checked(requests, found), context)
            if found:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, found[0])
            return response
        return grpc.stream_unary_rpc_method_handler(stream_unary, **kw)
