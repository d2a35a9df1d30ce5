"""The `poolserve` command line.  Each subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int``; this file only lists them."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "serve": ("poolserve.server", "run the gRPC server"),
    "health": ("poolserve.health", "ask a server's gRPC health service whether it is serving"),
    "export-onnx": ("poolserve.export", "write the ONNX pooling graphs as .onnx files"),
    "info": ("poolserve.info", "print what this installation offers: kernels, ISA, backends"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="poolserve",
        description="Max, average and Lp pooling served over gRPC (C kernels and ONNX Runtime).")
    parser.add_argument("--version", action="version", version=f"poolserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        try:
            modules[name] = importlib.import_module(module)
        except ImportError as e:  # e.g. a server extra that is not installed
            modules[name] = None
            sub.add_parser(name, help=f"{help_text} (unavailable: {e})")
            continue
        modules[name].add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    if modules[args.command] is None:
        parser.error(f"'{args.command}' is not available in this installation")
    return modules[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
