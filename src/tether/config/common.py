"""What every configuration file shares: a typed, strict TOML reader and TOML quoting.

Every path in a file may be relative (to the file's directory) or absolute, so a test
or the demo points a part at a sandbox simply by writing a different file. Unknown
keys are refused (a typo must not silently fall back to a default), and every bad
value gets a message naming the file and the key.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tether.errors import ConfigError
from tether.keys import VerifyKey, parse_address

DEFAULT_CONFIG_DIR = Path("/etc/tether")


class _Reader:
    """Typed access to one TOML table, with errors that name file and key."""

    def __init__(self, path: Path, data: Mapping[str, Any], table: str = "") -> None:
        self.path = path
        self.data = data
        self.table = table
        self.used: set[str] = set()

    def _where(self, key: str) -> str:
        return f"{self.path}: {self.table + '.' if self.table else ''}{key}"

    def _get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise ConfigError(f"{self._where(key)} is missing")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(f"{self._where(key)} has the wrong type ({type(value).__name__})")
        return value

    def text(self, key: str, default: Any = None) -> Any:
        return self._get(key, str, default)

    def integer(self, key: str, default: Any = None, *, low: int = 0, high: int = 2**31) -> Any:
        value = self._get(key, int, default)
        if value is not None and not low <= value <= high:
            raise ConfigError(f"{self._where(key)} must be between {low} and {high}")
        return value

    def number(
        self, key: str, default: Any = None, *, low: float = 0.001, high: float = 86400.0
    ) -> Any:
        value = self._get(key, (int, float), default)
        if value is None:
            return None
        if not math.isfinite(value) or not low <= value <= high:
            raise ConfigError(f"{self._where(key)} must be a number from {low:g} to {high:g}")
        return float(value)

    def path_(self, key: str, default: Any = None) -> Any:
        value = self.text(key, default)
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() else (self.path.parent / path).resolve()

    def strings(self, key: str, default: Any = None) -> Any:
        value = self._get(key, list, default)
        if value is not None and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self._where(key)} must be a list of strings")
        return value

    def table_(self, key: str) -> _Reader:
        value = self._get(key, dict, {})
        return _Reader(self.path, value, key)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(
                f"{self.path}: unknown setting(s) {', '.join(unknown)}"
                f"{' in [' + self.table + ']' if self.table else ''}"
            )


_REQUIRED = object()


def _read(path: Path) -> _Reader:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"configuration file {path} is not readable (run as root?)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return _Reader(path.resolve(), data)


def _verify_keys(reader: _Reader, key: str) -> tuple[VerifyKey, ...]:
    texts = reader.strings(key, _REQUIRED)
    if not texts:
        raise ConfigError(f"{reader.path}: {key} needs at least one k4.public… key")
    try:
        return tuple(VerifyKey.from_paserk(t) for t in texts)
    except Exception as exc:
        raise ConfigError(f"{reader.path}: {key}: {exc}") from None


def _metrics_listen(reader: _Reader) -> tuple[str, int] | None:
    """``[metrics] listen``: the part's internal ``/metrics``, ``/healthz``, ``/readyz``.

    ``None`` (no ``[metrics]`` table, or no ``listen`` in it): no such endpoint.
    """
    table = reader.table_("metrics")
    text = table.text("listen", "")
    table.finish()
    if not text:
        return None
    try:
        return parse_address(text, what="metrics address", any_port=True)
    except Exception as exc:
        raise ConfigError(f"{reader.path}: metrics.listen: {exc}") from None


def toml_string(value: str) -> str:
    """Quote ``value`` as a TOML basic string (control characters escaped)."""
    # JSON's string escapes are all valid TOML escapes; TOML also wants DEL escaped.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
