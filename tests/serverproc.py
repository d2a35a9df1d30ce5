"""Real `poolserve serve` processes for the deployment tests: started on 127.0.0.1 with port 0,
found by the address in their "serving" log line, stopped with SIGTERM (SIGKILL if they hang).

A process, not a thread: these tests kill servers, measure their memory and start several."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

SERVING = re.compile(r"msg=serving address=127\.0\.0\.1:(\d+) pid=(\d+)")


class ServerProc:
    def __init__(self, *flags: str, log_dir: Path, env: dict | None = None, command=None, name="server",
                 start_timeout: float = 60.0):
        self.log_path = Path(log_dir) / f"{name}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w+")
        cmd = list(command or [sys.executable, "-m", "poolserve.app"])
        cmd += ["serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--log-format", "text",
                "--drain-delay", "0", "--grace", "2", *flags]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + start_timeout
        while True:
            m = SERVING.search(self.log())
            if m:
                self.port, self.pid = int(m.group(1)), int(m.group(2))
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server did not start in {start_timeout} s:\n{self.log()}")
            time.sleep(0.05)
        self.target = f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def requests_served(self, rpc: str = "Pool") -> int:
        """Requests this server logged (needs --log-level debug: one line per request)."""
        return len(re.findall(rf"msg=request rpc={rpc} ", self.log()))

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a replica that dies without draining (OOM kill, node loss)."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "ServerProc":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
