"""Kernel benchmark: poolserve's C kernels against ONNX Runtime, PyTorch and the memory floor.

For every case (DESIGN.md's shape set, plus float16, channels-last, global and stride-1
variants) and mode (max, max with indices, avg, and the max/avg backward), one run times:

* ``c``         poolserve.backends.c.CBackend(threads=T).forward/backward, end to end from Python,
                under the server's malloc settings (poolserve.server.tune_malloc), as the
                PyTorch calls are too;
* ``ort``       a bare ``session.run`` of a one-node ONNX graph (MaxPool, AveragePool, Global*)
                built here with onnx.helper, T intra-op threads (channels-last: the same spec,
                so the graph is Transpose -> pool -> Transpose, ONNX pooling being NCHW only);
* ``torch``     torch.nn.functional.*_pool*d on CPU, torch.set_num_threads(T), channels-first;
* ``torch_cl``  the same on a channels_last (or channels_last_3d) tensor;
* ``bound``     the memory floor of the call, measured in the same process on the spot: a
                streaming read of the call's input bytes plus a streaming write of its output
                bytes, T threads (pool_stream_read/pool_stream_write in the kernel library).

Absolute times on these shared 2-core machines drift, so the implementations are timed in
alternating rounds and the report is ratios of medians from the same run (DESIGN.md, "Performance
method").  Results: bench/results/kernels.json and kernels.png; a table of ratios on stdout.

    python bench/kernels.py [--threads 2] [--quick] [--only NAME]
"""

from __future__ import annotations

import os

# Three thread pools share two cores here: ours and PyTorch's (each its own libgomp) and ONNX
# Runtime's.  Left to spin after a call for libgomp's default 300000 rounds, each one's idle
# workers take the cores from the next implementation timed (seen: 10 ms for a 10 us call).  So
# the OpenMP pools wait as the server's do (tune_openmp: passive, after a short spin of ~10-30 us),
# ONNX Runtime without spinning, BLAS (unused) on one thread.
from poolserve.server import MALLOC_TOP_PAD, tune_malloc, tune_openmp

tune_openmp()  # before the kernels (and PyTorch's libgomp) load
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from poolserve.backends import _kernels  # noqa: E402
from poolserve.backends.c import CBackend  # noqa: E402
from poolserve.spec import PoolSpec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# (name, input shape as channels-first, dtype, layout, kernel, stride, pad); kernel None = global
STANDARD = [
    ("tiny", (1, 16, 32, 32), "float32", "channels_first", 2, 2, 0),
    ("resnet-stem", (1, 64, 112, 112), "float32", "channels_first", 3, 2, 1),
    ("vgg-pool1", (1, 64, 224, 224), "float32", "channels_first", 2, 2, 0),
    ("batch32", (32, 64, 56, 56), "float32", "channels_first", 2, 2, 0),
    ("wide-overlap", (8, 256, 56, 56), "float32", "channels_first", 3, 2, 1),
    ("video3d", (2, 32, 16, 56, 56), "float32", "channels_first", 2, 2, 0),
    ("resnet-stem-f16", (1, 64, 112, 112), "float16", "channels_first", 3, 2, 1),
    ("vgg-pool1-f16", (1, 64, 224, 224), "float16", "channels_first", 2, 2, 0),
    ("resnet-stem-cl", (1, 64, 112, 112), "float32", "channels_last", 3, 2, 1),
    ("batch32-cl", (32, 64, 56, 56), "float32", "channels_last", 2, 2, 0),
    ("global-7x7", (32, 512, 7, 7), "float32", "channels_first", None, None, None),
    # stride 1 (Inception's 3x3/s1/p1 branch pooling): off the stride-2 fast paths (cf_win)
    ("inception-s1", (1, 64, 56, 56), "float32", "channels_first", 3, 1, 1),
]
# the four largest float32 shapes: the bandwidth-floor targets apply to them
LARGEST_F32 = ("vgg-pool1", "batch32", "wide-overlap", "video3d")
MODES = ("max", "max+idx", "avg", "max-bwd", "avg-bwd")


def make_spec(case, mode) -> tuple[PoolSpec, tuple]:
    name, shape, dtype, layout, k, s, p = case
    rank = len(shape) - 2
    base = "max" if mode.startswith("max") else "avg"
    if k is None:
        spec = PoolSpec(base, global_pool=True, layout=layout, return_indices=mode == "max+idx")
    else:
        spec = PoolSpec(base, (k,) * rank, strides=(s,) * rank, pads=(p,) * 2 * rank, layout=layout,
                        return_indices=mode == "max+idx")
    data_shape = shape if layout == "channels_first" else (shape[0], *shape[2:], shape[1])
    return spec, data_shape


# ---- implementations: each returns a zero-argument callable, or None where it has no such call ---

def c_call(backend, spec, x, mode):
    if mode.endswith("-bwd"):
        y, ind = backend.forward(spec.replace(return_indices=mode == "max-bwd"), x)
        dy = np.ones_like(y)
        if mode == "max-bwd":
            return lambda: backend.backward(spec, x.shape, dy, indices=ind)
        return lambda: backend.backward(spec, x.shape, dy)
    return lambda: backend.forward(spec, x)


def ort_call(spec, x, mode, threads):
    if mode.endswith("-bwd"):
        return None  # ONNX Runtime's CPU build has no pooling gradient
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    elem = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[x.dtype.name]
    rank = x.ndim - 2
    cl = spec.layout == "channels_last"
    nodes, pool_in = [], "x"
    if cl:
        nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[0, x.ndim - 1, *range(1, x.ndim - 1)]))
        pool_in = "xt"
    outs = ["yp"] + (["ip"] if spec.return_indices else [])
    if spec.global_pool:
        nodes.append(helper.make_node("GlobalMaxPool" if spec.mode == "max" else "GlobalAveragePool", [pool_in], ["yp"]))
    else:
        attrs = dict(kernel_shape=list(spec.kernel_shape), strides=list(spec.strides), pads=list(spec.pads))
        if spec.mode == "avg":
            attrs["count_include_pad"] = int(spec.count_include_pad)
        nodes.append(helper.make_node("MaxPool" if spec.mode == "max" else "AveragePool", [pool_in], outs, **attrs))
    outputs = []
    if cl:
        nodes.append(helper.make_node("Transpose", ["yp"], ["y"], perm=[0, *range(2, x.ndim), 1]))
    else:
        nodes[-1].output[0] = "y"
    outputs.append(helper.make_tensor_value_info("y", elem, None))
    if spec.return_indices:
        outputs.append(helper.make_tensor_value_info("ip", TensorProto.INT64, None))
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", elem, list(x.shape))], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feed = {"x": x}
        sess.run(None, feed)
    except Exception as e:  # e.g. no float16 kernel for this op on CPU
        print(f"  ort: {type(e).__name__}: {str(e).splitlines()[0][:100]}", file=sys.stderr)
        return None
    return lambda: sess.run(None, feed)


def torch_call(spec, x, mode, threads, channels_last):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(threads)
    rank = x.ndim - 2
    xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)) if spec.layout == "channels_last" else x)
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last if rank == 2 else torch.channels_last_3d)
    if spec.global_pool:
        k, s, p = tuple(xt.shape[2:]), (1,) * rank, (0,) * rank
    else:
        k, s, p = spec.kernel_shape, spec.strides, spec.pads[:rank]
    mx = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[rank]
    av = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]
    try:
        if mode == "max":
            f = lambda: mx(xt, k, s, p)  # noqa: E731
        elif mode == "max+idx":
            f = lambda: mx(xt, k, s, p, return_indices=True)  # noqa: E731
        elif mode == "avg":
            f = lambda: av(xt, k, s, p, count_include_pad=spec.count_include_pad)  # noqa: E731
        elif mode == "max-bwd":
            y, ind = mx(xt, k, s, p, return_indices=True)
            dy = torch.ones_like(y)
            op = {2: torch.ops.aten.max_pool2d_with_indices_backward,
                  3: torch.ops.aten.max_pool3d_with_indices_backward}[rank]
            dil = [1] * rank
            f = lambda: op(dy, xt, list(k), list(s), list(p), dil, False, ind)  # noqa: E731
        else:
            y = av(xt, k, s, p, count_include_pad=spec.count_include_pad)
            dy = torch.ones_like(y)
            op = {2: torch.ops.aten.avg_pool2d_backward, 3: torch.ops.aten.avg_pool3d_backward}[rank]
            f = lambda: op(dy, xt, list(k), list(s), list(p), False, spec.count_include_pad, None)  # noqa: E731
        f()
    except Exception as e:  # e.g. no Half kernel
        print(f"  torch{'_cl' if channels_last else ''}: {type(e).__name__}: {str(e).splitlines()[0][:100]}",
              file=sys.stderr)
        return None
    return f


def bound_call(in_bytes, out_bytes, threads):
    """The memory floor: a streaming read of in_bytes and a streaming write of out_bytes."""
    src = np.ones(max(1, in_bytes // 4), np.float32)
    dst = np.empty(max(1, out_bytes // 4), np.float32)
    r, w = _kernels.lib.pool_stream_read, _kernels.lib.pool_stream_write
    sp, dp = src.ctypes.data, dst.ctypes.data

    def f(keep=(src, dst)):  # the closure holds the buffers: they live as long as f
        r(sp, in_bytes, threads)
        w(dp, out_bytes, threads)
    return f


def call_bytes(spec, x, mode):
    """Bytes the call must read and write at the least."""
    g = spec.resolve(x.shape)
    item = x.dtype.itemsize
    xin, yout = g.input_elements * item, g.output_elements * item
    if mode == "max":
        return xin, yout
    if mode == "max+idx":
        return xin, yout + g.output_elements * 8
    if mode == "avg":
        return xin, yout
    if mode == "max-bwd":
        return yout + g.output_elements * 8, xin  # dy and indices in, dx out
    return yout, xin  # avg-bwd: dy in, dx out


# ---- timing ------------------------------------------------------------------------------------

def time_calls(fns: dict, budget_s: float, rounds: int, block: int = 5) -> dict:
    """Median seconds per call of each function.

    Each implementation is timed in a block of `block` samples, then the next; the blocks repeat
    `rounds` times so that drift on a shared machine reaches every implementation alike.  Blocks,
    not single calls, alternate: OpenMP and ONNX Runtime worker threads spin for a while after a
    call, and would steal the two cores from whichever implementation ran next."""
    per = {}
    for k, f in fns.items():  # warm up (page in buffers, start thread pools), then size the samples
        f()
        t0 = time.perf_counter()
        f()
        dt = time.perf_counter() - t0
        per[k] = max(1, min(200, int(0.003 / max(dt, 1e-7))))  # ~3 ms a sample
    samples = {k: [] for k in fns}
    deadline = time.perf_counter() + budget_s
    for r in range(rounds):
        for k, f in fns.items():
            n = per[k]
            for _ in range(2):  # let the previous implementation's threads go quiet
                f()
            for _ in range(block):
                t0 = time.perf_counter()
                for _ in range(n):
                    f()
                samples[k].append((time.perf_counter() - t0) / n)
        if r >= 2 and time.perf_counter() > deadline:
            break
    return {k: statistics.median(v) for k, v in samples.items()}


def run(threads: int, quick: bool, only: str | None):
    rng = np.random.default_rng(0)
    backend = CBackend(threads=threads)
    rows = []
    cases = [c for c in STANDARD if only is None or only in c[0]]
    for case in cases:
        name, shape, dtype = case[0], case[1], case[2]
        x0 = rng.standard_normal(shape).astype(dtype)
        for mode in MODES:
            spec, data_shape = make_spec(case, mode)
            x = x0 if spec.layout == "channels_first" else np.ascontiguousarray(np.moveaxis(x0, 1, -1))
            assert x.shape == data_shape
            fns = {"c": c_call(backend, spec, x, mode)}
            o = ort_call(spec, x, mode, threads)
            if o:
                fns["ort"] = o
            for cl in (False, True):
                t = torch_call(spec, x, mode, threads, cl)
                if t:
                    fns["torch_cl" if cl else "torch"] = t
            in_b, out_b = call_bytes(spec, x, mode)
            fns["bound"] = bound_call(in_b, out_b, threads)
            if mode == "max+idx":
                # the indices cost is a ratio of two C calls: time the call without indices (and
                # its floor) in the same alternating blocks, not seconds apart in the max row --
                # drift between the rows read tiny's cost as 2.30x where side by side it is 1.41x
                fns["c_noidx"] = c_call(backend, spec.replace(return_indices=False), x, "max")
                fns["bound_noidx"] = bound_call(*call_bytes(spec, x, "max"), threads)
            times = time_calls(fns, budget_s=0.5 if quick else 3.0, rounds=3 if quick else 5)
            path = backend.kernel_path(spec, x.shape, x.dtype, backward=mode.endswith("-bwd"))
            row = {"case": name, "shape": list(x.shape), "dtype": dtype, "layout": spec.layout, "mode": mode,
                   "kernel_path": path, "bytes_in": in_b, "bytes_out": out_b,
                   "seconds": times}
            if mode == "max+idx":
                row["indices_cost"] = times["c"] / times["c_noidx"]
                # the same ratio with both calls on the memory floor: the int64 indices are bytes to write
                row["indices_floor"] = times["bound"] / times["bound_noidx"]
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def ratio(row, other):
    s = row["seconds"]
    return s[other] / s["c"] if other in s else None


def fmt(v, digits=2):
    return "  -  " if v is None else f"{v:5.{digits}f}"


HEADER = (f"{'case':16s} {'mode':8s} {'c (us)':>9s} {'ort/c':>6s} {'torch/c':>7s} {'tcl/c':>6s} "
          f"{'c/bound':>7s}  path")


def format_row(row):
    s = row["seconds"]
    return (f"{row['case']:16s} {row['mode']:8s} {s['c'] * 1e6:9.1f} {fmt(ratio(row, 'ort')):>6s} "
            f"{fmt(ratio(row, 'torch')):>7s} {fmt(ratio(row, 'torch_cl')):>6s} "
            f"{fmt(s['c'] / s['bound']):>7s}  {row['kernel_path']}")


def markdown(rows, meta):
    lines = [f"Measured {meta['date']} on {meta['cpu']} ({meta['threads']} threads, kernels: {meta['isa']}); "
             "ratios of medians from one run of `make bench-kernels`. ort/c, torch/c: how many times "
             "longer ONNX Runtime / PyTorch (channels-first, channels_last) take than the C backend "
             "(higher is better); c/bound: C time over the memory floor (read input + write output, "
             "measured in the same run; 1.0 is the floor).", "",
             "| case | dtype | layout | mode | C µs | ort/c | torch/c | torch_cl/c | c/bound |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r["seconds"]
        lines.append(f"| {r['case']} | {r['dtype']} | {'NHWC' if r['layout'] == 'channels_last' else 'NCHW'} | "
                     f"{r['mode']} | {s['c'] * 1e6:.0f} | {fmt(ratio(r, 'ort')).strip()} | "
                     f"{fmt(ratio(r, 'torch')).strip()} | {fmt(ratio(r, 'torch_cl')).strip()} | "
                     f"{s['c'] / s['bound']:.2f} |")
    return "\n".join(lines)


def targets(rows):
    """The issue's targets, per row: (target, value, met, ceiling).  For a ratio over a rival,
    ceiling is the ratio a C backend sitting exactly on the memory floor would reach (the rival's
    time over the bound): where it is below the target, the target needs C faster than the
    floor, and no kernel reaches it on this machine.  For the indices cost, ceiling is the cost
    with max and max+idx both on their floors (the bounds' ratio)."""
    out = []
    for r in rows:
        s = r["seconds"]
        if r["mode"] in ("max", "avg"):
            need = 1.5 if r["mode"] == "max" else 2.0
            for other in ("ort", "torch", "torch_cl"):
                if other in s:
                    out.append((f"{r['case']} {r['mode']} vs {other} >= {need}x", s[other] / s["c"],
                                s[other] / s["c"] >= need, s[other] / s["bound"]))
            if r["case"] in LARGEST_F32:
                limit = 1.6 if r["case"] == "wide-overlap" else 1.3  # 3x3/s2 windows overlap
                out.append((f"{r['case']} {r['mode']} c/bound <= {limit}", s["c"] / s["bound"],
                            s["c"] / s["bound"] <= limit, None))
        if r["mode"] == "max+idx":
            out.append((f"{r['case']} indices cost <= 1.5x", r["indices_cost"], r["indices_cost"] <= 1.5,
                        r["indices_floor"]))
        if r["mode"].endswith("-bwd"):
            out.append((f"{r['case']} {r['mode']} c/bound <= 2", s["c"] / s["bound"], s["c"] / s["bound"] <= 2.0, None))
    return out


def below_floor(target, ceiling) -> bool:
    """Does this target ask for C faster than the memory floor?  A rival target: only where the
    rival itself is no faster than the measured bound (on the tiny shape the bound is mostly the
    cost of waking its threads, not a floor, and a rival beats it).  The indices cost: where the
    cost with both calls on their floors is above the limit."""
    if ceiling is None:
        return False
    if "indices cost <=" in target:
        return ceiling > float(target.rsplit("<=", 1)[1].rstrip("x"))
    need = float(target.rsplit(">=", 1)[1].rstrip("x")) if ">=" in target else None
    return need is not None and 1.0 <= ceiling < need


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    impls = ["c", "ort", "torch", "torch_cl", "bound"]
    fwd = [r for r in rows]
    labels = [f"{r['case']}\n{r['mode']}" for r in fwd]
    fig, ax = plt.subplots(figsize=(max(12, len(fwd) * 0.55), 6))
    width = 0.16
    for i, impl in enumerate(impls):
        vals = [r["seconds"][impl] / r["seconds"]["c"] if impl in r["seconds"] else 0 for r in fwd]
        ax.bar(np.arange(len(fwd)) + (i - 2) * width, vals, width, label=impl)
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_yscale("log")
    ax.set_ylabel("time relative to the C backend (log; higher = slower than C)")
    ax.set_xticks(np.arange(len(fwd)))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.legend()
    ax.set_title("poolserve kernels vs ONNX Runtime, PyTorch and the memory floor")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    ap.add_argument("--only", help="run the cases whose name contains this")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    # the server's malloc setting, as bench/backend_policy.py does: without it whether a big output
    # page-faults in afresh on every call (2 ms on 3 MiB) depends on what the process freed before
    tune_malloc(MALLOC_TOP_PAD)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "threads": args.threads, "isa": CBackend.isa(), "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            meta["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    for mod in ("onnxruntime", "torch", "numpy"):
        try:
            meta[mod] = __import__(mod).__version__
        except ImportError:
            meta[mod] = None
    print(HEADER)
    rows = run(args.threads, args.quick, args.only)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tg = targets(rows)
    (out / "kernels.json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                  "targets": [dict(target=t, value=v, met=m, floor_ratio=f,
                                                                   below_floor=below_floor(t, f))
                                                              for t, v, m, f in tg]},
                                                 indent=1))
    (out / "kernels.md").write_text(markdown(rows, meta) + "\n")
    try:
        plot(rows, out / "kernels.png")
    except ImportError:
        print("matplotlib not installed: no chart (pip install '.[bench]')", file=sys.stderr)
    print()
    met = sum(m for _, _, m, _ in tg)
    print(f"targets met: {met}/{len(tg)}")
    for t, v, m, f in tg:
        if not m:
            why = f"  (below the floor: C on the floor would be {f:.2f}x)" if below_floor(t, f) else ""
            print(f"  missed: {t}: {v:.2f}{why}")
    beyond = sum(not m and below_floor(t, f) for t, _, m, f in tg)
    print(f"missed targets that need C faster than the memory floor (the rival runs within the "
          f"target ratio of the floor, or the indices' bytes alone cost more than the limit): {beyond}")
    print(f"\nwrote {out / 'kernels.json'}, {out / 'kernels.md'}, {out / 'kernels.png'}")


if __name__ == "__main__":
    main()
