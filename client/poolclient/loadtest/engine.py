"""The load engine: worker processes that keep requests in flight and time them.

One step of a run is one load level: a closed loop at concurrency C, or an open loop at R
requests/s.  The parent starts P worker processes, each with its own gRPC channels and one
asyncio loop (grpc.aio), waits until every one is connected, then gives them a common start
time t0 on the system-wide monotonic clock.  Every worker runs warm-up (not recorded), then the
measurement window, then stops sending and waits for what is in flight (each call has a
deadline, so that wait is bounded); it sends back HDR histograms and counters, which the parent
merges.  Nothing here loops without a bound: every phase ends on a clock or a count, and the
parent terminates a worker that has not reported by a hard deadline.

Why processes: one Python process saturates its core long before a good server does; P
processes on P cores do not.  Why the processes never inherit gRPC state: grpc does not survive
a fork of a process that owns channels or servers, so workers are forked from a clean
multiprocessing "forkserver" by default (a caller's process may well have gRPC objects,
pytest's does), and they create their channels only after they start.

Timing:
* closed loop: latency = reply time - send time of each request; a request belongs to the
  measurement when it is *sent* inside the window.  A stalled server stalls the senders too,
  so a closed loop under-reports stalls (coordinated omission): that is the closed loop's
  nature, and why the open loop exists.
* open loop: arrivals are scheduled (Poisson or evenly spaced) from t0 regardless of replies,
  and latency is measured from the *intended* send time, so time a request spent waiting for
  the client to get round to sending it (because the server or the client stalled) counts.
  The gap between intended and actual send time is recorded too ("send lag"): a large one
  means the client could not keep up, i.e. the result measures the client, not the server.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import multiprocessing as mp
import os
import queue as queue_mod
import random
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass

from . import histo

MAX_MESSAGE_BYTES = 512 << 20
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Without this, channels with equal arguments in one process share one TCP connection
    # (the global subchannel pool), and "4 channels" would be one connection.
    ("grpc.use_local_subchannel_pool", 1),
]
PROGRESS_FIELDS = 4  # per worker: sent, ok, errors, bytes (both ways), all measured only


@dataclass(frozen=True)
class Load:
    """One load level and how to apply it."""

    model: str = "closed"        # "closed" (fixed concurrency) or "open" (target rate)
    level: float = 1             # concurrency (closed) or requests per second (open)
    arrivals: str = "poisson"    # open loop: "poisson" or "constant"
    duration: float = 2.0        # seconds of measurement (ignored when `requests` is set)
    warmup: float = 0.5          # seconds before measurement, not recorded
    requests: int | None = None  # measure this many requests instead of a duration
    max_duration: float = 300.0  # with `requests`: stop anyway after this many seconds
    processes: int = 1           # client worker processes
    channels: int = 1            # gRPC channels (connections) per process
    timeout: float = 10.0        # deadline of every call, seconds
    max_in_flight: int = 4096    # open loop, per process: past it, sends wait (and the lag shows)
    check_every: int = 100       # spot-check the first and every N-th good reply (0: never)
    connect_timeout: float = 20.0
    seed: int = 0

    def __post_init__(self):
        if self.model not in ("closed", "open"):
            raise ValueError(f"model={self.model!r}: closed or open")
        if self.arrivals not in ("poisson", "constant"):
            raise ValueError(f"arrivals={self.arrivals!r}: poisson or constant")
        if self.level <= 0 or (self.model == "closed" and int(self.level) != self.level):
            raise ValueError(f"level={self.level!r}: a positive concurrency (integer) or rate")
        if self.processes < 1 or self.channels < 1:
            raise ValueError("processes and channels must be >= 1")
        if self.requests is None and not self.duration > 0:
            raise ValueError("duration must be > 0 (or set requests)")
        if self.requests is not None and self.requests < 1:
            raise ValueError("requests must be >= 1")

    def split(self) -> list[dict]:
        """Each worker's share: concurrency or rate, request quota, and phase."""
        n = min(self.processes, int(self.level)) if self.model == "closed" else self.processes
        shares = []
        for i in range(n):
            if self.model == "closed":
                c = int(self.level) // n + (i < int(self.level) % n)
                part = c / self.level
            else:
                c = self.level / n
                part = 1 / n
            quota = None
            if self.requests is not None:
                quota = self.requests // n + (i < self.requests % n)
            # evenly spaced arrivals: offset the workers so the merged schedule is even too
            phase = i / self.level if self.model == "open" else 0.0
            shares.append({"index": i, "level": c, "share": part, "quota": quota, "phase": phase})
        return shares


# ---------------------------------------------------------------------------------------------
# Inside a worker process
# ---------------------------------------------------------------------------------------------
class _Recorder:
    """Counts and histograms of one worker.  Single-threaded (the asyncio loop)."""

    def __init__(self, t_measure: float, t_stop: float, quota: int | None, payload, check_every: int,
                 progress, slot: int):
        self.t_measure, self.t_stop, self.quota = t_measure, t_stop, quota
        self.hist, self.lag = histo.new(), histo.new()
        self.sent = self.ok = 0
        self.errors: collections.Counter = collections.Counter()
        self.examples: dict[str, str] = {}
        self.bytes_out = self.bytes_in = 0
        self.request_bytes = payload.request_bytes
        self.checker = payload.checker if check_every > 0 else None
        self.check_every = check_every
        self.checks = 0
        self.last_done = t_measure
        self.progress, self.slot = progress, slot * PROGRESS_FIELDS

    def admit(self, t: float) -> bool | None:
        """Whether a request sent (or due) at t is measured; None: send no more."""
        if t >= self.t_stop:
            return None
        if t < self.t_measure:
            return False
        if self.quota is not None:
            if self.quota <= 0:
                return None
            self.quota -= 1
        self.sent += 1
        self.progress[self.slot] = self.sent
        return True

    def done(self, measured: bool, t_from: float, t_done: float, status: str, reply, detail: str) -> None:
        if not measured:
            return
        if status == "OK" and self.checker is not None and self.ok % self.check_every == 0:
            self.checks += 1
            bad = self.checker.check(reply)
            if bad is not None:
                status, detail = "WRONG_ANSWER", bad
        self.bytes_out += self.request_bytes
        if status == "OK":
            self.ok += 1
            self.bytes_in += len(reply)
            histo.record_seconds(self.hist, t_done - t_from)
            self.progress[self.slot + 1] = self.ok
        else:
            self.errors[status] += 1
            self.examples.setdefault(status, detail)
            self.progress[self.slot + 2] += 1
        self.progress[self.slot + 3] = self.bytes_out + self.bytes_in
        self.last_done = max(self.last_done, t_done)


class _UnaryCaller:
    def __init__(self, grpc, channel, payload, timeout: float):
        self.grpc = grpc
        self.call_fn = channel.unary_unary(payload.method)  # no serializers: bytes in, bytes out
        self.request, self.metadata, self.timeout = payload.first, payload.metadata or None, timeout

    async def call(self):
        try:
            reply = await self.call_fn(self.request, timeout=self.timeout, metadata=self.metadata)
            return "OK", reply, ""
        except self.grpc.aio.AioRpcError as e:
            return e.code().name, None, e.details() or ""

    async def close(self):
        pass


class _StreamCaller:
    """One bidirectional stream; calls may overlap (the open loop pipelines them).

    Replies come in request order, so a FIFO of futures pairs them up.  When the stream ends
    with an error, every request still waiting on it gets that status, and the next call opens
    a new stream (whose first message carries the spec again).
    """

    def __init__(self, grpc, channel, payload, timeout: float):
        self.grpc = grpc
        self.call_fn = channel.stream_stream(payload.method)
        self.first, self.next = payload.first, payload.next if payload.next is not None else payload.first
        self.metadata, self.timeout = payload.metadata or None, timeout
        self.stream_status = payload.stream_status
        self.stream = None
        self.waiters: collections.deque = collections.deque()
        self.lock = asyncio.Lock()
        self.readers: set = set()

    async def _read(self, stream, waiters):
        status, detail = "UNKNOWN", "stream ended without a status"
        try:
            while True:
                reply = await stream.read()
                if reply is self.grpc.aio.EOF:
                    code = await stream.code()
                    status = code.name if code != self.grpc.StatusCode.OK else "STREAM_ENDED"
                    detail = await stream.details() or "the server closed the stream early"
                    break
                if waiters:
                    fut = waiters.popleft()
                    if not fut.done():
                        failed = self.stream_status(reply) if self.stream_status else None
                        fut.set_result((failed[0], None, failed[1]) if failed else ("OK", reply, ""))
        except self.grpc.aio.AioRpcError as e:
            status, detail = e.code().name, e.details() or ""
        except asyncio.CancelledError:
            status, detail = "CANCELLED", "stream cancelled by the harness"
        finally:
            if self.stream is stream:
                self.stream = None
            while waiters:
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_result((status, None, detail))

    async def call(self):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        async with self.lock:  # writes in order, one at a time
            if self.stream is None:
                self.stream = self.call_fn(metadata=self.metadata)
                self.waiters = collections.deque()
                self.sent_first = False
                reader = asyncio.create_task(self._read(self.stream, self.waiters))
                self.readers.add(reader)
                reader.add_done_callback(self.readers.discard)
            self.waiters.append(fut)
            message = self.next if self.sent_first else self.first
            self.sent_first = True
            stream = self.stream
            try:
                await stream.write(message)
            except Exception as e:
                # The stream had already ended, usually because an earlier request on it failed:
                # this request gets the stream's status, not a made-up one.
                if not fut.done():
                    try:
                        code = (await asyncio.wait_for(stream.code(), 1.0)).name
                    except Exception:
                        code = "UNAVAILABLE"
                    fut.set_result((code, None, f"the stream ended before this request was sent ({e!r})"))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except asyncio.TimeoutError:
            return "DEADLINE_EXCEEDED", None, f"no reply on the stream within {self.timeout:g} s"

    async def close(self):
        stream = self.stream
        if stream is not None:
            try:
                await asyncio.wait_for(stream.done_writing(), 5)
            except Exception:
                pass
        if self.readers:
            _, late = await asyncio.wait(self.readers, timeout=self.timeout)
            for task in late:
                task.cancel()
        if stream is not None:
            stream.cancel()


async def _closed_loop(rec: _Recorder, callers: list, now) -> None:
    async def one_sender(caller):
        while True:
            t = now()
            measured = rec.admit(t)
            if measured is None:
                return
            status, reply, detail = await caller.call()
            rec.done(measured, t, now(), status, reply, detail)

    await asyncio.gather(*(one_sender(c) for c in callers))


async def _open_loop(rec: _Recorder, callers: list, now, t0: float, rate: float, arrivals: str, phase: float,
                     max_in_flight: int, seed: int) -> None:
    """Send on a schedule that does not wait for replies.

    The schedule is kept by a thread that sleeps with time.sleep (about 0.1 ms late at worst)
    and hands each arrival to the event loop; asyncio's own timers wake in whole milliseconds,
    rounded up, which would add up to a millisecond of the harness's lateness to every latency.
    Each request is timed from its intended time, or from when it actually left if that was
    earlier; the lateness of the send is recorded separately as send lag.
    """
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    gap = (lambda: rng.expovariate(rate)) if arrivals == "poisson" else (lambda: 1.0 / rate)
    in_flight: set = set()
    backlog: collections.deque = collections.deque()  # arrivals due while max_in_flight calls were out
    failures: list = []
    stop = threading.Event()
    finished = asyncio.Event()
    counter = itertools.count()

    async def one(caller, t_from: float, measured: bool):
        status, reply, detail = await caller.call()
        rec.done(measured, t_from, now(), status, reply, detail)

    def launch(t: float, measured: bool):
        t_send = now()
        if measured:
            histo.record_seconds(rec.lag, max(0.0, t_send - t))
        task = loop.create_task(one(callers[next(counter) % len(callers)], min(t, t_send), measured))
        in_flight.add(task)
        task.add_done_callback(finish)

    def finish(task):
        in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())
        if backlog:
            launch(*backlog.popleft())

    def fire(t: float):  # on the loop, for each arrival
        measured = rec.admit(t)
        if measured is None:
            stop.set()
        elif len(in_flight) >= max_in_flight:
            backlog.append((t, measured))
        else:
            launch(t, measured)

    def schedule():  # the timer thread
        t = t0 + (phase if arrivals == "constant" else gap())
        try:
            while not stop.is_set() and t < rec.t_stop:
                wait = t - now()
                if wait > 0:
                    time.sleep(min(wait, 0.05))  # short naps: a quota reached elsewhere stops us soon
                    continue
                loop.call_soon_threadsafe(fire, t)
                t += gap()
        finally:
            loop.call_soon_threadsafe(finished.set)  # queued after the last fire

    timer = threading.Thread(target=schedule, name="loadtest-schedule", daemon=True)
    timer.start()
    try:
        await finished.wait()
        while in_flight:
            await asyncio.wait(list(in_flight))
    finally:
        stop.set()
        timer.join(timeout=1)
    if failures:
        raise failures[0]


async def _run_worker(target: str, payload, load: Load, share: dict, ready_q, go, t0_value, progress):
    import grpc

    i = share["index"]
    loop = asyncio.get_running_loop()
    channels = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(load.channels)]
    try:
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), load.connect_timeout)
        except asyncio.TimeoutError:
            ready_q.put((i, f"cannot connect to {target} within {load.connect_timeout:g} s"))
            return None
        ready_q.put((i, None))
        if not await loop.run_in_executor(None, go.wait, load.connect_timeout + 60):
            return None
        t0 = t0_value.value
        t_measure = t0 + load.warmup
        window = load.max_duration if load.requests is not None else load.duration
        rec = _Recorder(t_measure, t_measure + window, share["quota"], payload, load.check_every, progress, i)
        now = time.monotonic
        cpu_at = {}
        # CPU time of the whole process (grpc's own threads included) over the measurement
        loop.call_at(t_measure, lambda: cpu_at.setdefault("start", (time.process_time(), now())))
        await asyncio.sleep(max(0.0, t0 - now()))
        kind = _StreamCaller if payload.streaming else _UnaryCaller
        if load.model == "closed":
            callers = [kind(grpc, channels[k % len(channels)], payload, load.timeout) for k in range(share["level"])]
            run = _closed_loop(rec, callers, now)
        else:
            callers = [kind(grpc, c, payload, load.timeout) for c in channels]
            run = _open_loop(rec, callers, now, t0, share["level"], load.arrivals, share["phase"], load.max_in_flight,
                             load.seed * 1000 + i)
        try:
            await run
        finally:
            for c in callers:
                await c.close()
        cpu0, wall0 = cpu_at.get("start", (time.process_time(), now()))
        cpu_s, busy_wall = time.process_time() - cpu0, now() - wall0
        return {
            "index": i, "sent": rec.sent, "ok": rec.ok, "errors": dict(rec.errors), "examples": rec.examples,
            "bytes_out": rec.bytes_out, "bytes_in": rec.bytes_in, "checks": rec.checks,
            "hist": histo.encode(rec.hist), "lag": histo.encode(rec.lag),
            "t_measure": t_measure, "last_done": rec.last_done, "cpu_s": cpu_s, "busy_wall_s": busy_wall,
            "pid": os.getpid(),
        }
    finally:
        for c in channels:
            await c.close()


def _worker_main(target, payload, load, share, ready_q, go, t0_value, progress, result_q):
    # The open loop's timer thread needs the GIL on time; the default 5 ms switch interval would
    # let the event loop hold it that long.
    sys.setswitchinterval(0.0005)
    try:
        result = asyncio.run(_run_worker(target, payload, load, share, ready_q, go, t0_value, progress))
    except BaseException:
        result = {"index": share["index"], "fatal": traceback.format_exc()}
        ready_q.put((share["index"], result["fatal"]))
    result_q.put(result)


# ---------------------------------------------------------------------------------------------
# In the parent
# ---------------------------------------------------------------------------------------------
class LoadError(RuntimeError):
    pass


def default_start_method() -> str:
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def run_step(target: str, payload, load: Load, *, label: str = "service", progress=None,
             start_method: str | None = None) -> dict:
    """Apply one load level to `target` and return its merged result (see report.step_summary).

    progress: called about twice a second with a dict of the live counters (or None).
    """
    ctx = mp.get_context(start_method or default_start_method())
    shares = load.split()
    n = len(shares)
    ready_q, result_q = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    t0_value = ctx.Value("d", 0.0, lock=False)
    live = ctx.Array("d", n * PROGRESS_FIELDS, lock=False)
    procs = [ctx.Process(target=_worker_main, name=f"loadtest-{label}-{s['index']}", daemon=True,
                         args=(target, payload, load, s, ready_q, go, t0_value, live, result_q)) for s in shares]
    for p in procs:
        p.start()
    results: dict[int, dict] = {}
    try:
        # 1. every worker connected (or one failed: then nobody starts)
        deadline = time.monotonic() + load.connect_timeout + 60
        problems = []
        ready = 0
        while ready < n and not problems:
            try:
                i, err = ready_q.get(timeout=0.2)
            except queue_mod.Empty:
                dead = [p for p in procs if p.exitcode is not None]
                if dead:  # e.g. a script without the `if __name__ == "__main__":` guard
                    problems.append(f"worker process {dead[0].name} exited with code {dead[0].exitcode} "
                                    "before connecting")
                elif time.monotonic() > deadline:
                    problems.append("a worker did not connect in time")
                continue
            ready += 1
            if err:
                problems.append(f"worker {i}: {err}")
        if problems:
            raise LoadError("; ".join(problems))
        # 2. a common start; the lead time lets every worker wake before t0
        t0 = time.monotonic() + 0.05
        t0_value.value = t0
        go.set()
        window = load.max_duration if load.requests is not None else load.duration
        hard_stop = t0 + load.warmup + window + 2 * load.timeout + 30  # + drain + stream close
        while len(results) < n:
            if time.monotonic() > hard_stop:
                raise LoadError(f"{n - len(results)} worker(s) did not finish by the hard deadline")
            try:
                r = result_q.get(timeout=0.5)
                results[r["index"]] = r
            except queue_mod.Empty:
                pass
            if progress is not None:
                progress(_live_counters(live, n, t0, load))
        fatal = [r["fatal"] for r in results.values() if r and "fatal" in r]
        if fatal:
            raise LoadError("worker failed:\n" + fatal[0])
    finally:
        go.set()  # release anyone still waiting, then make sure every process is gone
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    return _merge(label, payload, load, [results[i] for i in sorted(results)])


def _live_counters(live, n: int, t0: float, load: Load) -> dict:
    sent = ok = err = nbytes = 0.0
    for i in range(n):
        b = i * PROGRESS_FIELDS
        sent, ok, err, nbytes = sent + live[b], ok + live[b + 1], err + live[b + 2], nbytes + live[b + 3]
    elapsed = time.monotonic() - t0 - load.warmup
    return {"elapsed": elapsed, "warming": elapsed < 0, "sent": int(sent), "ok": int(ok), "errors": int(err),
            "bytes": nbytes, "duration": load.duration if load.requests is None else None,
            "requests": load.requests}


def _merge(label: str, payload, load: Load, results: list[dict]) -> dict:
    hist = histo.merge([r["hist"] for r in results])
    lag = histo.merge([r["lag"] for r in results])
    errors: collections.Counter = collections.Counter()
    examples: dict[str, str] = {}
    for r in results:
        errors.update(r["errors"])
        for k, v in r["examples"].items():
            examples.setdefault(k, v)
    sent = sum(r["sent"] for r in results)
    ok = sum(r["ok"] for r in results)
    t_measure = results[0]["t_measure"]
    if load.requests is None:
        elapsed = load.duration
    else:  # a count: the window runs until the last measured reply
        elapsed = max(r["last_done"] for r in results) - t_measure
    elapsed = max(elapsed, 1e-9)
    busy = [r["cpu_s"] / r["busy_wall_s"] if r["busy_wall_s"] > 0 else 0.0 for r in results]
    lag_ms = histo.summary_ms(lag) if load.model == "open" else None
    lat = histo.summary_ms(hist)
    notes = []
    if max(busy, default=0) > 0.9:
        notes.append(f"a client process used {max(busy):.0%} of a core: the client may be the bottleneck "
                     "(add --processes)")
    if lag_ms and lag_ms["p99"] is not None and lag_ms["p99"] > 2.0:
        notes.append(f"open-loop send lag p99 {lag_ms['p99']:.1f} ms: sends left late, the client fell behind "
                     "its schedule (latencies include that wait)")
    return {
        "target": label,
        "model": load.model,
        "level": load.level,
        "arrivals": load.arrivals if load.model == "open" else None,
        "offered_rps": load.level if load.model == "open" else None,
        "duration_s": elapsed,
        "warmup_s": load.warmup,
        "sent": sent,
        "ok": ok,
        "errors": dict(sorted(errors.items())),
        "error_examples": examples,
        "throughput_rps": ok / elapsed,
        "bytes_out_per_s": sum(r["bytes_out"] for r in results) / elapsed,
        "bytes_in_per_s": sum(r["bytes_in"] for r in results) / elapsed,
        "latency_ms": lat,
        "send_lag_ms": lag_ms,
        "client": {
            "processes": len(results),
            "channels_per_process": load.channels,
            "cpu_busy_per_process": busy,
            "cpu_cores_used": sum(r["cpu_s"] for r in results) / elapsed,
            "cpu_count": os.cpu_count(),
            "notes": notes,
        },
        "checks": {
            "done": sum(r["checks"] for r in results),
            "failed": errors.get("WRONG_ANSWER", 0),
            "enabled": payload.checker is not None and load.check_every > 0,
            "note": payload.checks_note,
        },
        "histogram": histo.encode(hist),
        "load": asdict(load),
    }
