"""Structured logs: one line per event, as logfmt (key=value) or JSON.

Call sites pass their fields as ``extra={"fields": {...}}``; the formatter writes them after
the message.  Request lines go out at DEBUG, a periodic summary at INFO (server.py).
"""

from __future__ import annotations

import json
import logging
import sys
import time


class _Formatter(logging.Formatter):
    def __init__(self, style: str):
        super().__init__()
        self.json = style == "json"

    def format(self, record: logging.LogRecord) -> str:
        fields = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                  "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        fields.update(getattr(record, "fields", {}))
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.json:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def _quote(v) -> str:
    s = str(v)
    if s and not any(c in s for c in ' "=\n'):
        return s
    return json.dumps(s)


def setup(level: str = "info", style: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(style))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
