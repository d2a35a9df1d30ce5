"""Scale-out: one client, three server processes, gRPC's round_robin policy; then one server is
killed mid-run and no request is lost -- its calls are retried (UNAVAILABLE, through the
client's service config) on the others, which take its share.

Each server logs one line per request (--log-level debug); the shares are counted there, on
the servers' side, not from anything the client believes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from poolclient import PoolClient
from serverproc import ServerProc

REQUESTS = 300
THREADS = 4


def _pooled(i: int):
    x = np.full((1, 2, 4, 4), float(i), np.float32)
    x[0, 1, 3, 3] = i + 0.5
    return x


def _check(i: int, y) -> None:
    # the answer belongs to this request (no mix-up across retries)
    assert y.shape == (1, 2, 2, 2) and y[0, 0].max() == i and y[0, 1, 1, 1] == i + 0.5


@pytest.fixture
def three_servers(tmp_path):
    servers = [ServerProc("--log-level", "debug", "--threads", "4", log_dir=tmp_path, name=f"replica{i}")
               for i in range(3)]
    yield servers
    for s in servers:
        s.stop()


def _counts(servers, total=None, timeout=10.0) -> list[int]:
    """Requests each server logged.  A server writes its log line as the call finishes, which
    can be just after the client has its answer: wait until the sum reaches ``total``."""
    deadline = time.monotonic() + timeout
    while True:
        counts = [s.requests_served() for s in servers]
        if total is None or sum(counts) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def _run(client, count: int, on_progress=None) -> list[int]:
    done = []
    lock = threading.Lock()

    def one(i):
        y = client.max_pool(_pooled(i), 2)
        _check(i, y)
        with lock:
            done.append(i)
            n = len(done)
        if on_progress:
            on_progress(n)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, range(count)))  # re-raises the first failure
    return done


def test_round_robin_spreads_and_survives_a_killed_replica(three_servers):
    servers = three_servers
    with PoolClient([s.target for s in servers], timeout=30, retries=4) as client:
        grpc.channel_ready_future(client._channel).result(timeout=30)

        # every replica gets a share of one client's calls
        assert len(_run(client, REQUESTS)) == REQUESTS
        shares = _counts(servers, REQUESTS)
        assert sum(shares) == REQUESTS, shares
        assert min(shares) >= REQUESTS // 6, f"round_robin should spread the calls, got {shares}"

        # kill one replica (SIGKILL: no draining) a third of the way into the next run
        victim, others = servers[0], servers[1:]
        before = [s.requests_served() for s in others]
        killed = threading.Event()

        def progress(n):
            if n >= REQUESTS // 3 and not killed.is_set():
                killed.set()
                victim.kill()

        done = _run(client, REQUESTS, on_progress=progress)
        assert killed.is_set() and not victim.alive()
        assert sorted(done) == list(range(REQUESTS))  # every request answered, correctly

        # the survivors absorbed the victim's share: everything after the kill went to them
        victim_total = victim.requests_served()  # its log survives it
        absorbed = [a - b for a, b in zip(_counts(others, sum(before) + REQUESTS - (victim_total - shares[0])), before)]
        assert victim_total - shares[0] < REQUESTS // 3 + THREADS * 5
        assert sum(absorbed) >= REQUESTS - (victim_total - shares[0])
        assert min(absorbed) >= REQUESTS // 6, absorbed

        # and a call after the run still works
        _check(7, client.max_pool(_pooled(7), 2))


def test_pick_first_is_what_round_robin_avoids(three_servers):
    # the control: gRPC's default policy sends one channel's calls to one address, which is
    # why the client defaults to round_robin (and why a ClusterIP Service is not enough)
    servers = three_servers
    with PoolClient([s.target for s in servers], timeout=30, lb_policy="pick_first") as client:
        _run(client, 60)
    shares = sorted(_counts(servers, 60))
    assert shares == [0, 0, 60], shares


def test_targets():
    from poolclient._calls import auth_metadata, channel_target, default_lb_policy

    assert channel_target("dns:///poolserve.ns.svc.cluster.local:50051") == "dns:///poolserve.ns.svc.cluster.local:50051"
    assert channel_target(["127.0.0.1:1"]) == "127.0.0.1:1"
    assert channel_target(["127.0.0.1:1", "10.0.0.2:2"]) == "ipv4:127.0.0.1:1,10.0.0.2:2"
    assert channel_target(("[::1]:1", "[fe80::1]:2")) == "ipv6:[::1]:1,[fe80::1]:2"
    for bad in (["a.example:1", "b.example:1"], ["127.0.0.1:1", "[::1]:2"], []):
        with pytest.raises(ValueError):
            channel_target(bad)
    assert default_lb_policy("dns:///poolserve.ns.svc:50051") == "round_robin"
    assert default_lb_policy(channel_target(["127.0.0.1:1", "127.0.0.1:2"])) == "round_robin"
    assert default_lb_policy("127.0.0.1:1") == default_lb_policy("ipv4:127.0.0.1:1") == "pick_first"
    assert auth_metadata(None) == () and auth_metadata("t") == (("authorization", "Bearer t"),)
    with pytest.raises(ValueError):
        auth_metadata("t\nx-injected: 1")
