"""The two ways to deploy, run as written, outside the source tree:

- README's "From a wheel" block, line by line in bash (wheel -> fresh venv -> serve -> health
  -> pool), with its paths and port swapped for the test's own;
- the Dockerfile's build and install steps (its `pip` and `venv` RUN lines), then the image's
  ENTRYPOINT/CMD with its ENV, its HEALTHCHECK command, and a pool request.  There is no Docker
  engine here, so this is as close as CI gets to `docker build` + `docker run`.

Both need the package index for the server's dependencies (pip's cache serves repeats)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
X = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
WANT = X.reshape(1, 2, 2, 2, 2, 2).max(axis=(3, 5))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**extra) -> dict:
    # nothing of the checkout may leak into the fresh venv's imports
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def _run_script(script: str, cwd: Path, timeout: float, env=None) -> subprocess.CompletedProcess:
    """bash -e, in its own process group; background jobs (a server) are stopped when the script
    ends, so that they neither outlive the test nor hold its output pipe open."""
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true; wait || true' EXIT\n" + script
    proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env=env or _clean_env())
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout} s:\n{out[-4000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the background server, if still there
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


# -- README ---------------------------------------------------------------------------------------
def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n### From a wheel\n", 1)[1].split("\n### ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, re.S)
    return block


def test_readme_deployment_steps(tmp_path):
    block = readme_block()
    # the steps README promises, in order
    order = ["pip wheel", "-m venv", "pip install", "poolserve serve", "poolserve health", "poolclient pool"]
    positions = [block.find(step) for step in order]
    assert -1 not in positions and positions == sorted(positions), dict(zip(order, positions))

    port = _free_port()
    work = tmp_path / "work"
    work.mkdir()
    script = (block.replace("/tmp/wheels", str(tmp_path / "wheels"))
                   .replace("/opt/poolserve", str(tmp_path / "venv"))
                   .replace("cd /tmp\n", f"cd {shlex.quote(str(work))}\n")
                   .replace("50051", str(port))
                   .replace("python3 -m", f"{shlex.quote(sys.executable)} -m"))
    # pip's own progress noise off; the block itself is unchanged
    out = _run_script(script, cwd=ROOT, timeout=900, env=_clean_env(PIP_QUIET="1"))
    assert out.returncode == 0, out.stdout[-4000:]
    assert f"127.0.0.1:{port}: SERVING" in out.stdout
    # the venv is outside the source tree and the package came from the wheel, not the checkout
    site = list((tmp_path / "venv").glob("lib/python*/site-packages/poolserve/libpoolkernels.so"))
    assert site, "the kernels are not installed in the venv"
    np.testing.assert_array_equal(np.load(work / "y.npy"), WANT)


# -- Dockerfile -----------------------------------------------------------------------------------
def _dockerfile():
    """(RUN commands, ENV, ARG defaults, ENTRYPOINT + CMD, HEALTHCHECK command) of the Dockerfile."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())  # join continuation lines
    runs, env, args = [], {}, {}
    entry = cmd = health = None
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "RUN":
            runs.append(rest)
        elif word == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", rest))
        elif word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v
        elif word == "ENTRYPOINT":
            entry = eval(rest)  # exec form: a JSON list  # noqa: S307
        elif word == "CMD":
            cmd = eval(rest)  # noqa: S307
        elif word == "HEALTHCHECK":
            health = eval(rest.split(" CMD ", 1)[1])  # noqa: S307
    return runs, env, args, entry + cmd, health


def test_dockerfile_install_steps_serve(tmp_path):
    runs, env, args, command, health = _dockerfile()
    steps = [r for r in runs if "pip " in r or "-m venv" in r]
    assert len(steps) == 2, steps  # the build stage's wheel, the runtime stage's install
    wheels, prefix = tmp_path / "wheels", tmp_path / "opt-poolserve"
    script = []
    for step in steps:
        step = (step.replace("/wheels", str(wheels)).replace("/opt/poolserve", str(prefix))
                    .replace("${EXTRA}", args["EXTRA"])
                    # the image runs `python` from PATH; here, this interpreter.  pip's cache is
                    # allowed here (--no-cache-dir only keeps the image small).
                    .replace("python -m", f"{shlex.quote(sys.executable)} -m", 1)
                    .replace(" --no-cache-dir", "")
                    .replace("rm -rf " + str(wheels), "true"))
        script.append(step)
    # the build stage's WORKDIR holds the sources it COPYs; run its step in the checkout
    build = _run_script(script[0], cwd=ROOT, timeout=600)
    assert build.returncode == 0, build.stdout[-4000:]
    outside = tmp_path / "run"
    outside.mkdir()
    install = _run_script(script[1], cwd=outside, timeout=600)
    assert install.returncode == 0, install.stdout[-4000:]

    # the image's environment, PATH first; on 127.0.0.1 and a free port here, not 0.0.0.0
    port, metrics = _free_port(), _free_port()
    run_env = {k: v.replace("$PATH", os.environ["PATH"]) for k, v in env.items()}
    run_env.update(POOLSERVE_HOST="127.0.0.1", POOLSERVE_PORT=str(port), POOLSERVE_METRICS_PORT=str(metrics),
                   PATH=f"{prefix / 'bin'}:{os.environ['PATH']}")
    assert command[:2] == ["poolserve", "serve"], command
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([str(prefix / "bin" / "poolserve"), *command[1:]], cwd=outside, stdout=log,
                              stderr=subprocess.STDOUT, env={**_clean_env(), **run_env})
    try:
        deadline = time.monotonic() + 60
        while True:  # the HEALTHCHECK command, as Docker would run it (start period, retries)
            check = subprocess.run([str(prefix / "bin" / health[0]), *health[1:]], cwd=outside,
                                   capture_output=True, text=True, env={**_clean_env(), **run_env}, timeout=30)
            if check.returncode == 0:
                break
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, check.stderr
            time.sleep(0.5)
        assert f"127.0.0.1:{port}: SERVING" in check.stdout
        # JSON log lines, as the image configures
        assert (tmp_path / "server.log").read_text().lstrip().startswith("{")

        np.save(outside / "x.npy", X)
        pool = subprocess.run([str(prefix / "bin" / "poolclient"), "pool", "x.npy", "--mode", "max", "-k", "2",
                               "--target", f"127.0.0.1:{port}", "-o", "y.npy"], cwd=outside,
                              capture_output=True, text=True, timeout=60, env=_clean_env())
        assert pool.returncode == 0, pool.stderr
        np.testing.assert_array_equal(np.load(outside / "y.npy"), WANT)
    finally:
        server.send_signal(signal.SIGTERM)  # what `docker stop` sends; the server drains, exits 0
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait()
        log.close()
    assert code == 0, (tmp_path / "server.log").read_text()[-3000:]
