"""vendor.toml: the one-click request policy and the lifetime of request keys."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tether.config import RequestPolicy, VendorConfig
from tether.errors import ConfigError
from tether.store import sqlite_url
from tether.vendor_service.authority import init_data_dir


@pytest.fixture
async def toml(tmp_path: Path) -> Path:
    result = await init_data_dir(
        tmp_path / "v",
        vendor="ACME",
        relay="127.0.0.1:2222",
        database=sqlite_url(tmp_path / "t.db"),
    )
    return result.config.path


async def test_defaults_hold_and_21_days(toml: Path) -> None:
    # Auto-approving anyone who asks hands keys to strangers: waiting for a human is the default.
    assert '# request_policy = "hold"' in toml.read_text()
    config = VendorConfig.load(toml)
    assert config.request_policy is RequestPolicy.HOLD
    assert str(config.request_policy) == "hold"
    assert config.request_key_lifetime == timedelta(days=21)


async def test_hold_and_another_lifetime(toml: Path) -> None:
    with toml.open("a") as f:
        f.write('request_policy = "hold"\nrequest_key_lifetime = "12w"\n')
    config = VendorConfig.load(toml)
    assert config.request_policy is RequestPolicy.HOLD
    assert config.request_key_lifetime == timedelta(weeks=12)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('request_policy = "ask"', 'request_policy must be "auto"'),
        ("request_policy = 1", "wrong type"),
        ('request_key_lifetime = "13w"', "at most 12 weeks"),
        ('request_key_lifetime = "soon"', "cannot read duration"),
    ],
)
async def test_bad_values_are_refused(toml: Path, line: str, words: str) -> None:
    with toml.open("a") as f:
        f.write(line + "\n")
    with pytest.raises(ConfigError, match=words):
        VendorConfig.load(toml)
