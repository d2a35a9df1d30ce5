"""`poolserve info`: what this installation offers, for bug reports and deployment checks."""

from __future__ import annotations

import argparse
import json
import os

from . import __version__, backends


def collect() -> dict:
    out = {"version": __version__, "cpu_count": os.cpu_count(), "backends": {}}
    for name in backends.names():
        try:
            cls = backends.load(name)
        except backends.Unsupported as e:
            out["backends"][name] = {"available": False, "reason": str(e)}
            continue
        entry = {"available": True}
        if hasattr(cls, "isa"):
            entry["isa"] = cls.isa()
        if hasattr(cls, "available_providers"):
            entry["providers"] = list(cls.available_providers())
        out["backends"][name] = entry
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"poolserve {info['version']} on {info['cpu_count']} CPUs")
    for name, entry in info["backends"].items():
        detail = ", ".join(f"{k}={v}" for k, v in entry.items() if k != "available")
        print(f"  backend {name}: {'available' if entry['available'] else 'unavailable'}"
              + (f" ({detail})" if detail else ""))
    return 0
