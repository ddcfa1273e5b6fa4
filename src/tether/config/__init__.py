"""One TOML file per part: ``/etc/tether/agent.toml``, ``relay.toml``, ``vendor.toml``.

:mod:`~tether.config.common` holds the strict reader they share; each part's file has
its own module. Everything a caller needs is importable from here.
"""

from tether.config.agent import (
    AgentConfig,
    FailMode,
    NotifySettings,
    RecordingSettings,
    TetherSettings,
    WebSettings,
    parse_size,
)
from tether.config.common import DEFAULT_CONFIG_DIR, toml_string
from tether.config.relay import RelayConfig
from tether.config.vendor import MAX_REQUEST_KEY_LIFETIME, RequestPolicy, VendorConfig

__all__ = [
    "DEFAULT_CONFIG_DIR",
    "MAX_REQUEST_KEY_LIFETIME",
    "AgentConfig",
    "FailMode",
    "NotifySettings",
    "RecordingSettings",
    "RelayConfig",
    "RequestPolicy",
    "TetherSettings",
    "VendorConfig",
    "WebSettings",
    "parse_size",
    "toml_string",
]
