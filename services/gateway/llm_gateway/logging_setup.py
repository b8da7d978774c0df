"""JSON-lines logging that never blocks the event loop.

Every record becomes one JSON object on stdout: ``ts``, ``level``, ``logger``, ``msg``,
``pid`` and whatever the caller put in ``extra=`` (request_id, key_id, status, ...).
Records are handed to a queue on the loop and written by a background thread
(the standard library's QueueHandler/QueueListener), so a slow stdout pipe (a busy
container log driver) costs the request path a queue put, not a blocked write.

Never pass prompts, completions or API keys to a logger: log the key *id* at most.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
import time

import orjson

# LogRecord attributes that are plumbing, not data: everything else a caller put in
# ``extra=`` is emitted as a JSON field.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}

_listener: logging.handlers.QueueListener | None = None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for name, value in record.__dict__.items():
            if name not in _RESERVED and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:           # rendered by _PassThroughQueueHandler on the way here
            entry["exc"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


class _PassThroughQueueHandler(logging.handlers.QueueHandler):
    """Enqueue the record as is: formatting happens on the writer thread, not on the loop."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.exc_info and not record.exc_text:
            # Tracebacks hold frames; render them now, while they are still meaningful.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


def setup_logging(level: str = "info") -> None:
    """Route the root logger (and uvicorn's) through one JSON writer thread. Idempotent."""
    global _listener
    if _listener is not None:
        return
    writer = logging.StreamHandler(sys.stdout)
    writer.setFormatter(JsonFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, writer, respect_handler_level=False)
    _listener.start()
    atexit.register(stop_logging)

    root = logging.getLogger()
    root.handlers[:] = [_PassThroughQueueHandler(records)]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Third-party chatter at INFO would cost more than the gateway's own access line.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def stop_logging() -> None:
    """Flush queued records (called at exit; safe to call twice)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
