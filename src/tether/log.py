"""Structured logging: one event per line, ``event key=value ...`` (logfmt).

Call :func:`event` with an event name and fields. Values are quoted when needed and
newlines are escaped, so a hostile value (an SSH user name, a serial) cannot forge a
second log line. Never pass secrets (keys, passwords, tokens) as fields.
"""

from __future__ import annotations

import logging
import sys
import time
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
    if logger.isEnabledFor(level):
        logger.log(level, format_event(name, **fields))


def setup(level: int = logging.INFO, *, stream: Any = None) -> None:
    """Configure the ``tether`` loggers for a long-running process (stderr, UTC timestamps)."""
    handler = logging.StreamHandler(stream or sys.stderr)
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
