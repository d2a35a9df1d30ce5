"""`poolclient`: pooling from the shell.

    poolclient pool input.npy --mode max -k 2 -s 2 -o out.npy
    poolclient info
    poolclient loadtest --scenario resnet-stem --concurrency 1,2,4,8 --baseline echo
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from . import PoolClient, PoolError, Spec
from . import _calls as calls


def _ints(text: str):
    """"2" -> 2 (every axis); "2,3" -> (2, 3)."""
    parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    return parts[0] if len(parts) == 1 else tuple(parts)


def _connection_args(parser):
    default = os.environ.get("POOLSERVE_TARGET", calls.DEFAULT_TARGET)
    parser.add_argument("--target", default=default, help="server host:port [env POOLSERVE_TARGET; %(default)s]")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call (default %(default)s)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system roots, or --tls-ca)")
    parser.add_argument("--tls-ca", help="PEM root certificates to trust")
    parser.add_argument("--tls-cert", help="PEM client certificate, for a server that wants mutual TLS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--token-file", default=os.environ.get("POOLSERVE_TOKEN_FILE"),
                        help="file holding the bearer token for a server with --auth-token-file "
                             "[env POOLSERVE_TOKEN_FILE] (a file, so the token is not in `ps`)")


def _client(args) -> PoolClient:
    from . import TLS

    if args.tls_ca or args.tls_cert:
        tls = TLS(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    else:
        tls = True if args.tls else None
    token = None
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    return PoolClient(args.target, timeout=args.timeout, tls=tls, token=token)


def _add_pool(sub):
    p = sub.add_parser("pool", help="pool a .npy tensor", description="Pool a .npy tensor on the server.")
    p.add_argument("input", help="input .npy file: (N, C, spatial...) or, with --channels-last, (N, spatial..., C)")
    p.add_argument("--mode", choices=["max", "avg", "lp"], default="max")
    p.add_argument("-k", "--kernel-size", type=_ints, help="window: 2 (every axis) or 2,3 (per axis)")
    p.add_argument("-s", "--stride", type=_ints, help="default: the kernel size")
    p.add_argument("-p", "--padding", default="0",
                   help="symmetric padding per axis (1 or 1,0), or 'same' / 'valid'")
    p.add_argument("--pads", type=_ints, help="asymmetric padding, ONNX order (begins, then ends)")
    p.add_argument("-d", "--dilation", type=_ints, default=1)
    p.add_argument("--ceil-mode", action="store_true")
    p.add_argument("--count-include-pad", action="store_true", help="avg: count padding in the divisor")
    p.add_argument("--norm", type=float, dest="p", help="lp: the exponent p (default 2)")
    p.add_argument("--global", dest="global_pool", action="store_true", help="one window over all spatial axes")
    p.add_argument("--channels-last", action="store_true", help="the input is (N, spatial..., C)")
    p.add_argument("--backend", help="c or onnx (default: the server's policy)")
    p.add_argument("--provider", help="onnx: cpu or cuda")
    p.add_argument("-o", "--output", required=True, help="output .npy file")
    p.add_argument("--indices", help="max: also write the argmax offsets to this .npy file")
    _connection_args(p)


def _run_pool(args) -> int:
    x = np.load(args.input, allow_pickle=False)
    padding = args.padding if args.padding.lower() in ("same", "valid") else _ints(args.padding)
    spec = Spec(args.mode, args.kernel_size, args.stride, padding, pads=args.pads, dilation=args.dilation,
                ceil_mode=args.ceil_mode, count_include_pad=args.count_include_pad, p=args.p,
                return_indices=bool(args.indices), global_pool=args.global_pool, backend=args.backend,
                provider=args.provider)
    layout = "channels_last" if args.channels_last else "channels_first"
    with _client(args) as c:
        out = c.pool(x, spec, layout=layout)
    y, ind = out if args.indices else (out, None)
    np.save(args.output, y)
    if ind is not None:
        np.save(args.indices, ind)
    print(f"{args.input} {list(x.shape)} {x.dtype} -> {args.output} {list(y.shape)}", file=sys.stderr)
    return 0


def _add_info(sub):
    p = sub.add_parser("info", help="what the server offers (JSON)")
    _connection_args(p)


def _run_info(args) -> int:
    from google.protobuf.json_format import MessageToDict

    with _client(args) as c:
        print(json.dumps(MessageToDict(c.server_info()), indent=2))
    return 0


def _add_loadtest(sub):
    from .loadtest.cli import add_parser  # stdlib only: the loadtest extra is needed to run, not to parse

    add_parser(sub)


def _run_loadtest(args) -> int:
    from .loadtest.cli import run

    return run(args)


COMMANDS = {"pool": (_add_pool, _run_pool), "info": (_add_info, _run_info),
            "loadtest": (_add_loadtest, _run_loadtest)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poolclient", description="Call a poolserve server.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except PoolError as e:
        print(f"poolclient: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"poolclient: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
