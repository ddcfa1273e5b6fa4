"""requirements.lock pins exactly what pyproject.toml asks for.

Setup and CI install from the lock, so a range changed in pyproject.toml without
``scripts/lock`` would silently not apply; a stale lock must fail the suite instead.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^ ;\\]+)(?:\s*;\s*(?P<marker>[^\\]+?))?\s*\\?$"
)
_VIA = re.compile(r"^\s+# via (?P<parents>.+)$")


def _direct_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r)
        for r in [*project["dependencies"], *project["optional-dependencies"]["test"]]
    ]


def _lock() -> tuple[dict[str, str], set[str]]:
    """Pinned version per package, and the packages the lock says Tether asks for itself."""
    pins: dict[str, str] = {}
    direct: set[str] = set()
    current = ""
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if pin := _PIN.match(line):
            current = canonicalize_name(pin["name"])
            pins[current] = pin["version"]
        elif (via := _VIA.match(line)) and "tether (pyproject.toml)" in via["parents"]:
            direct.add(current)
    return pins, direct


def test_every_requirement_of_pyproject_is_pinned_within_its_range() -> None:
    pins, _ = _lock()
    for requirement in _direct_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: run scripts/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside {requirement}: run scripts/lock"
        )


def test_the_lock_asks_for_nothing_pyproject_dropped() -> None:
    _, direct = _lock()
    wanted = {canonicalize_name(r.name) for r in _direct_requirements()}
    assert direct == wanted, (
        f"lock and pyproject.toml disagree on {sorted(direct ^ wanted)}: run scripts/lock"
    )


def test_every_pin_has_hashes() -> None:
    text = (ROOT / "requirements.lock").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.strip())
    missing = [e.split("==")[0] for e in entries if "--hash=sha256:" not in e]
    assert not missing, f"pins without hashes: {missing}"
