"""`poolclient loadtest`: latency and throughput of a poolserve deployment under load.

    poolclient loadtest --target 127.0.0.1:50051 --scenario resnet-stem --concurrency 1,2,4,8 --baseline echo
    poolclient loadtest --scenario tiny --rate 200,400,800 --arrivals poisson --duration 10
    poolclient loadtest --compare before/loadtest.json after/loadtest.json

Writes <out>/<name>.json (everything, HDR histograms included), <name>.csv, and the plots
<name>_percentiles.png and <name>_latency_throughput.png.  Exit status 0, or 3 when a reply
failed its spot check against the reference (a fast wrong answer is not a pass).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

EXIT_WRONG_ANSWER = 3


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())


def _levels(text: str) -> list[float]:
    return [float(p) for p in text.split(",") if p.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("target and API")
    t.add_argument("--target", default=os.environ.get("POOLSERVE_TARGET", "127.0.0.1:50051"),
                   help="server host:port, or 'echo' for a private echo server (transport only) "
                        "[env POOLSERVE_TARGET; %(default)s]")
    t.add_argument("--api", default="native",
                   choices=["native", "native-stream", "oip", "oip-stream", "raw", "raw-stream"],
                   help="native: Pool (unary); native-stream: PoolStream; oip: the Open Inference Protocol's "
                        "ModelInfer; oip-stream: ModelStreamInfer; raw: the input bytes to an echo method "
                        "(default %(default)s)")
    t.add_argument("--model", help="oip: the model to call (default: the default model that pools like the "
                                   "scenario)")
    s = p.add_argument_group("what each request computes (a scenario, then overrides)")
    s.add_argument("--scenario", default="tiny",
                   help="tiny, resnet-stem, vgg-pool1, batch32, wide-overlap, video3d, or a JSON/TOML file "
                        "of its fields (default %(default)s)")
    s.add_argument("--op", choices=["pool", "backward"])
    s.add_argument("--shape", type=_ints, help="input shape, e.g. 1,64,112,112")
    s.add_argument("--dtype", choices=["float32", "float64", "float16", "int8", "uint8"])
    s.add_argument("--layout", choices=["channels_first", "channels_last"])
    s.add_argument("--mode", choices=["max", "avg", "lp"])
    s.add_argument("--kernel", dest="kernel_shape", type=_ints, help="e.g. 3,3")
    s.add_argument("--stride", dest="strides", type=_ints)
    s.add_argument("--pads", type=_ints, help="ONNX order: begins, then ends")
    s.add_argument("--dilations", type=_ints)
    s.add_argument("--auto-pad", choices=["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])
    s.add_argument("--ceil-mode", action="store_true", default=None)
    s.add_argument("--count-include-pad", action="store_true", default=None)
    s.add_argument("--p", type=float, help="lp: the norm's exponent")
    s.add_argument("--return-indices", action="store_true", default=None)
    s.add_argument("--global", dest="global_pool", action="store_true", default=None)
    s.add_argument("--backend", help="c or onnx (default: the server's policy)")
    s.add_argument("--provider", help="onnx: cpu or cuda")
    s.add_argument("--seed", type=int)
    lo = p.add_argument_group("load")
    m = lo.add_mutually_exclusive_group()
    m.add_argument("--concurrency", type=_levels, help="closed loop: requests in flight, e.g. 1,2,4,8 (default 1)")
    m.add_argument("--rate", type=_levels, help="open loop: requests per second, e.g. 100,200,400")
    lo.add_argument("--arrivals", choices=["poisson", "constant"], default="poisson", help="open loop arrivals")
    lo.add_argument("--duration", type=float, default=5.0, help="measured seconds per level (default %(default)s)")
    lo.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds per level (default %(default)s)")
    lo.add_argument("--requests", type=int, help="measure this many requests per level instead of --duration")
    lo.add_argument("--max-duration", type=float, default=300.0, help="with --requests: stop anyway after this")
    lo.add_argument("--processes", type=int, default=max(1, min(4, (os.cpu_count() or 2) // 2)),
                    help="client processes (default %(default)s: half the CPUs, at most 4)")
    lo.add_argument("--channels", type=int, default=1, help="gRPC channels (connections) per process")
    lo.add_argument("--timeout", type=float, default=10.0, help="deadline of each call, seconds")
    lo.add_argument("--connect-timeout", type=float, default=20.0, help="seconds a worker may take to connect")
    lo.add_argument("--max-in-flight", type=int, default=4096, help="open loop: cap per process")
    lo.add_argument("--check-every", type=int, default=100,
                    help="compare the first and every N-th reply with the reference (0: never)")
    lo.add_argument("--baseline", choices=["echo"], help="also run each level against a bare gRPC echo server")
    lo.add_argument("--echo-threads", type=int, default=8, help="handler threads of the echo baseline")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, help="output folder (default loadtest-results/<UTC time>)")
    o.add_argument("--name", default="loadtest", help="file name stem (default %(default)s)")
    o.add_argument("--no-plots", action="store_true")
    o.add_argument("--quiet", action="store_true", help="no live progress line")
    o.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="no load: compare two earlier runs (table and plots)")


def add_parser(sub) -> argparse.ArgumentParser:
    """Register as a subcommand of the `poolclient` CLI."""
    p = sub.add_parser("loadtest", help="latency and throughput under load", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def _scenario(args):
    from . import scenario

    sc = scenario.load(args.scenario)
    fields = ["op", "shape", "dtype", "layout", "mode", "kernel_shape", "strides", "pads", "dilations", "auto_pad",
              "ceil_mode", "count_include_pad", "p", "return_indices", "global_pool", "backend", "provider", "model",
              "seed"]
    return sc.with_overrides(**{f: getattr(args, f) for f in fields})


def _progress(quiet: bool):
    if quiet:
        return None
    from .report import progress_line

    tty = sys.stderr.isatty()
    last = [0.0]

    def show(counters):
        now = time.monotonic()
        if not tty and now - last[0] < 2.0:  # in a log, a line every 2 s rather than a redraw
            return
        last[0] = now
        line = progress_line(counters)
        print(("\r" + line.ljust(100)) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    return show


def run(args) -> int:
    """Run the parsed command; errors a user can fix are one line on stderr, not a traceback."""
    try:
        from . import engine
    except ImportError as e:
        print(f"poolclient loadtest: {e.name or e} is missing: pip install 'poolserve[loadtest]'", file=sys.stderr)
        return 2
    try:
        return _run(args)
    except (ValueError, OSError, NotImplementedError, engine.LoadError) as e:
        print(f"poolclient loadtest: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from . import adapters, engine, plots, report, runner
    from .echo import EchoServer

    out = args.out or os.path.join("loadtest-results", time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    if args.compare:
        a, b = (report.read_json(p) for p in args.compare)
        print(report.compare_table(a, b))
        if not args.no_plots:
            for path in plots.plot_compare(a, b, out):
                print(f"wrote {path}")
        return 0

    sc = _scenario(args)
    payload = adapters.build(args.api, sc)
    model = "open" if args.rate else "closed"
    levels = args.rate or args.concurrency or [1.0]
    load = engine.Load(model=model, level=levels[0], arrivals=args.arrivals, duration=args.duration,
                       warmup=args.warmup, requests=args.requests, max_duration=args.max_duration,
                       processes=args.processes, channels=args.channels, timeout=args.timeout,
                       max_in_flight=args.max_in_flight, check_every=args.check_every,
                       connect_timeout=args.connect_timeout)
    command = "poolclient loadtest " + shlex.join(sys.argv[1:] if sys.argv[1:2] != ["loadtest"] else sys.argv[2:])
    progress = _progress(args.quiet)
    private_echo = None
    target = args.target
    if target == "echo":  # transport only: our own echo server plays the service
        private_echo = EchoServer(threads=args.echo_threads).start()
        target, payload = private_echo.target, payload.for_echo()
    try:
        rep = runner.run_sweep(target, payload, load, levels, baseline=args.baseline, echo_threads=args.echo_threads,
                               progress=progress, scenario=sc, command=command,
                               label="echo" if private_echo is not None else "service")
    finally:
        if private_echo is not None:
            private_echo.stop()
    if progress is not None and sys.stderr.isatty():
        print(file=sys.stderr)
    print(report.table(rep))
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f"{args.name}.json"), os.path.join(out, f"{args.name}.csv")]
    report.write_json(rep, paths[0])
    report.write_csv(rep, paths[1])
    if not args.no_plots:
        paths += plots.plot_report(rep, out, stem=f"{args.name}_")
    for path in paths:
        print(f"wrote {path}")
    wrong = sum(s["checks"]["failed"] for s in rep["steps"])
    return EXIT_WRONG_ANSWER if wrong else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="poolclient loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
