"""`poolserve export-onnx`: write the ONNX pooling graphs as .onnx files.

Each file holds one graph (see poolserve.backends.onnx.graphs) under a readable name such as
``maxpool_2d_float32_nchw_k3x3_s2x2_p1-1-1-1_indices_forward.onnx``, with the PoolSpec in its
doc string, so it opens in Netron and runs in any ONNX runtime.  ``index.json`` lists every file
with its spec, dtype, inputs and outputs.  ``OnnxBackend(model_dir=DIR)`` serves from such a
directory.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

from .spec import DTYPES_BY_MODE, PoolSpec, SpecError

ALL_DTYPES = tuple(dict.fromkeys(d for dtypes in DTYPES_BY_MODE.values() for d in dtypes))

# The kernel settings of DESIGN.md's standard shape set, in every mode.
DEFAULT_SPECS = tuple(
    PoolSpec(mode=mode, **geometry, **extra)
    for geometry in ({"kernel_shape": (2, 2)},
                     {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)},
                     {"kernel_shape": (2, 2, 2)})
    for mode, extra in (("max", {}), ("max", {"return_indices": True}), ("avg", {}), ("lp", {}))
)


def export_models(out_dir: str | Path, specs: Iterable[PoolSpec] = DEFAULT_SPECS,
                  dtypes: Iterable[str] = ("float32",), global_ranks: Iterable[int] = (2,),
                  backward: bool = True) -> tuple[list[Path], list[str]]:
    """Write the forward (and backward) graph of every supported (spec, dtype).

    Global specs are written once per rank in ``global_ranks``.  Returns the files written and a
    line for every combination skipped (with the reason ONNX Runtime cannot run it).
    """
    from .backends.onnx import capabilities, graphs  # needs onnx; the CLI reports it if missing

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, skipped, index = [], [], {}
    for spec in specs:
        ranks = list(global_ranks) if spec.global_pool else [spec.rank]
        for dtype in dtypes:
            if dtype not in DTYPES_BY_MODE[spec.mode]:
                continue  # the spec's own dtype rule, not a gap worth reporting
            kinds = [("forward", capabilities.forward_gap(spec, dtype))]
            if backward and dtype in ("float32", "float64", "float16"):
                kinds.append(("backward", capabilities.backward_gap(spec, dtype)))
            if capabilities.global_as_window(spec, dtype):
                # runs as a window over the input's whole extent: a graph per input shape
                skipped.append(f"{spec.mode} global pooling on {dtype}: ONNX Runtime's Global* operator cannot run it, "
                               "so the backend builds a graph per input shape; export the spec with "
                               "kernel_shape = the spatial shape instead")
                continue
            for kind, reason in kinds:
                for rank in ranks:
                    key = graphs.graph_key(kind, spec, dtype, rank)
                    if reason:
                        skipped.append(f"{key.name}: {reason}")
                        continue
                    if key.name in index:
                        continue  # e.g. the same backward graph for specs with and without indices
                    model = graphs.build(key)
                    path = out / f"{key.name}.onnx"
                    path.write_bytes(model.SerializeToString())
                    written.append(path)
                    index[key.name] = {
                        "file": path.name, "kind": kind, "dtype": dtype, "rank": rank, "spec": asdict(key.spec),
                        "inputs": [i.name for i in model.graph.input],
                        "outputs": [o.name for o in model.graph.output],
                    }
    (out / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return written, skipped


def parse_spec(text: str) -> PoolSpec:
    """A PoolSpec from JSON, e.g. '{"mode": "max", "kernel_shape": [3, 3], "strides": [2, 2]}'."""
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--spec is not JSON: {e}") from None
    if not isinstance(fields, dict):
        raise argparse.ArgumentTypeError("--spec must be a JSON object of PoolSpec fields")
    try:
        return PoolSpec(**fields)
    except TypeError as e:  # an unknown field
        raise argparse.ArgumentTypeError(f"--spec: {e}") from None
    except SpecError as e:
        raise argparse.ArgumentTypeError(f"--spec: {e}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="directory to write the .onnx files into")
    parser.add_argument("--spec", action="append", type=parse_spec, metavar="JSON",
                        help="a PoolSpec as JSON (repeatable); default: the kernels of DESIGN.md's "
                             "shape set in every mode")
    parser.add_argument("--dtype", action="append", choices=ALL_DTYPES, metavar="DTYPE",
                        help=f"one of {', '.join(ALL_DTYPES)} (repeatable); default float32")
    parser.add_argument("--global-rank", action="append", type=int, metavar="R",
                        help="spatial ranks to write global specs for (repeatable); default 2")
    parser.add_argument("--no-backward", action="store_true", help="write forward graphs only")


def run(args: argparse.Namespace) -> int:
    written, skipped = export_models(args.out, args.spec or DEFAULT_SPECS, args.dtype or ("float32",),
                                     args.global_rank or (2,), backward=not args.no_backward)
    for path in written:
        print(path)
    for line in skipped:
        print(f"skipped {line}")
    print(f"{len(written)} graphs written to {args.out} (index.json lists them)")
    return 0
