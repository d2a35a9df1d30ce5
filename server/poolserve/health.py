"""`poolserve health`: ask a server's gRPC health service (grpc.health.v1) whether it serves.

Exit status 0 when SERVING, 1 otherwise (NOT_SERVING, unreachable, timeout): the contract of
grpc_health_probe, for Docker HEALTHCHECK and Kubernetes exec probes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

if importlib.util.find_spec("grpc_health") is None:
    raise ImportError("grpc_health is not installed: pip install 'poolserve[server]'")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = f"127.0.0.1:{os.environ.get('POOLSERVE_PORT', '50051')}"
    parser.add_argument("--target", default=default, help="host:port of the server (default %(default)s)")
    parser.add_argument("--service", default="",
                        help='service to ask about: "" (the whole server, default) or poolserve.v1.Pooling')
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default %(default)s)")
    # TLS settings also come from POOLSERVE_HEALTH_* variables, so that a container's fixed
    # HEALTHCHECK command works against a TLS server by setting the environment alone.
    env = os.environ.get
    parser.add_argument("--tls", action="store_true", default=env("POOLSERVE_HEALTH_TLS") == "1",
                        help="connect with TLS [env POOLSERVE_HEALTH_TLS=1]")
    parser.add_argument("--tls-ca", default=env("POOLSERVE_HEALTH_TLS_CA"),
                        help="PEM root certificates for --tls (default: the system's) [env POOLSERVE_HEALTH_TLS_CA]")
    parser.add_argument("--tls-cert", default=env("POOLSERVE_HEALTH_TLS_CERT"),
                        help="PEM client certificate, for a server that wants mutual TLS [env POOLSERVE_HEALTH_TLS_CERT]")
    parser.add_argument("--tls-key", default=env("POOLSERVE_HEALTH_TLS_KEY"),
                        help="PEM private key of --tls-cert [env POOLSERVE_HEALTH_TLS_KEY]")
    parser.add_argument("--server-name", default=env("POOLSERVE_HEALTH_SERVER_NAME"),
                        help="name to check the server's certificate against (default: the target's host) "
                             "[env POOLSERVE_HEALTH_SERVER_NAME]")


def run(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if args.tls or args.tls_ca or args.tls_cert:
        def pem(path):
            with open(path, "rb") as f:
                return f.read()

        creds = grpc.ssl_channel_credentials(pem(args.tls_ca) if args.tls_ca else None,
                                             pem(args.tls_key) if args.tls_key else None,
                                             pem(args.tls_cert) if args.tls_cert else None)
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        channel = grpc.secure_channel(args.target, creds, options=options)
    else:
        channel = grpc.insecure_channel(args.target)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as e:
            print(f"{args.target}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
