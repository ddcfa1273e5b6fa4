"""Structured logging: one event per line, ``event key=value ...`` (logfmt) or JSON.

Call :func:`event` with an event name and fields. Values are quoted when needed and
newlines are escaped, so a hostile value (an SSH user name, a serial) cannot forge a
second log line. Never pass secrets (keys, passwords, tokens) as fields.

``setup(fmt="json")`` (``--log-format json`` on every server part) writes the same
events with the same fields as one JSON object per line, for Loki or Elasticsearch:
``{"time": ..., "level": ..., "logger": ..., "event": ..., <fields>}``. JSON escapes
every control character, so a hostile value cannot forge a line there either.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import stat
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@+,=[]")


_NAMED = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    """Escape quotes, backslashes and every control or line-separating character."""
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x20 or 0x7F <= code < 0xA0:
        return f"\\x{code:02x}"
    if char in ("\u2028", "\u2029"):
        return f"\\u{code:04x}"
    return char


def _value(value: Any) -> str:
    if isinstance(value, datetime):
        value = value.isoformat(timespec="seconds")
    elif isinstance(value, float):
        value = f"{value:.3f}"
    elif isinstance(value, (list, tuple, set, frozenset)):
        value = ",".join(str(v) for v in value)
    text = str(value)
    if text and all(c in _SAFE for c in text):
        return text
    return '"' + "".join(_escape(c) for c in text) + '"'


def format_event(name: str, **fields: Any) -> str:
    """Render one event line (without timestamp)."""
    parts = [name] + [f"{k}={_value(v)}" for k, v in fields.items() if v is not None]
    return " ".join(parts)


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event."""
    event_fields(logger, name, fields, level=level)


def event_fields(
    logger: logging.Logger, name: str, fields: Mapping[str, Any], *, level: int = logging.INFO
) -> None:
    """Log one structured event whose fields are already in a mapping."""
    if logger.isEnabledFor(level):
        kept = {k: v for k, v in fields.items() if v is not None}
        logger.log(level, format_event(name, **kept), extra={_EVENT: name, _FIELDS: kept})


#: Where :func:`event` leaves the event's name and fields on the log record.
_EVENT = "tether_event"
_FIELDS = "tether_fields"
#: The formats :func:`setup` writes (``--log-format``).
LOG_FORMATS = ("text", "json")
#: Keys of a JSON line that no event field may replace.
_RESERVED = frozenset({"time", "level", "logger", "event", "message", "error"})


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_value(v) for v in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, event and its fields.

    A record that did not come from :func:`event` (a library's warning, a traceback)
    carries its text as ``message`` (and ``error`` for a traceback).
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
        }
        name = getattr(record, _EVENT, None)
        fields = getattr(record, _FIELDS, None)
        if isinstance(name, str) and isinstance(fields, dict):
            line["event"] = name
            for key, value in fields.items():
                line[f"field_{key}" if key in _RESERVED else key] = _json_value(value)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        # ASCII only: U+2028 and friends would split a line for some readers.
        return json.dumps(line, ensure_ascii=True, default=str)


def setup(level: int = logging.INFO, *, stream: Any = None, fmt: str = "text") -> None:
    """Configure the ``tether`` loggers for a long-running process (stderr, UTC timestamps).

    :param fmt: ``"text"`` (``time LEVEL logger event key=value ...``) or ``"json"``.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    else:
        formatter = logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%SZ"
        )
        formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger("tether")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # asyncssh logs every channel at INFO; ours already say what matters.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)


def setup_command(level: int = logging.INFO) -> None:
    """Send a one-shot command's structured lines to the system log, never to the terminal.

    A person running ``tether access …`` reads the command's own words on stdout and
    stderr; an ``event key=value`` line printed before them (Python's last-resort
    handler does that for warnings) only hides the message. The lines go to syslog
    (``/dev/log``, the journal on systemd machines) where one is listening, else
    nowhere; ``TETHER_LOG=stderr`` shows them on stderr after all, for debugging.
    Long-running services call :func:`setup` instead, which replaces this.
    """
    root = logging.getLogger("tether")
    handler: logging.Handler
    if os.environ.get("TETHER_LOG") == "stderr":
        setup(level)
        return
    if _is_socket(SYSLOG_SOCKET):
        handler = _QuietSysLog(address=str(SYSLOG_SOCKET))
        handler.ident = "tether: "
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.getLogger("asyncssh").setLevel(logging.WARNING)


#: Where the system logger listens (journald or rsyslog).
SYSLOG_SOCKET = "/dev/log"


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class _QuietSysLog(logging.handlers.SysLogHandler):
    """Syslog that stays silent if the logger went away: never a traceback on stderr."""

    def handleError(self, record: logging.LogRecord) -> None:
        return None
