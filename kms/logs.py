"""Structured logs: one JSON object per line (or key=value text), fields passed explicitly.

Call sites pass ``extra={"fields": {...}}`` with identifiers only. As a last guard, any bytes
value that reaches a field is replaced by its length, so a key can never be printed by mistake.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


def _safe(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes withheld>"
    if isinstance(value, dict):
        return {k: _safe(v) for k, v in value.items()}
    return value


def _entry(record: logging.LogRecord) -> dict[str, object]:
    entry: dict[str, object] = {
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname,
        "logger": record.name,
        "event": record.getMessage(),
    }
    fields = getattr(record, "fields", None)
    if isinstance(fields, dict):
        entry.update({k: _safe(v) for k, v in fields.items()})
    return entry


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(record)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(record)
        head = f"{entry.pop('time')} {entry.pop('level'):<8} {entry.pop('event')}"
        entry.pop("logger")
        text = " ".join([head, *(f"{k}={v}" for k, v in entry.items())])
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic narrates every migration step at INFO; keep what it says when something is wrong.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
