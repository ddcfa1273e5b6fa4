"""The Debian package, built once per test session by ``scripts/package``.

With pytest-xdist both workers share one build: the first to take the lock builds into
the session's common temporary directory, the other waits and reuses it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Built:
    wheel: Path
    deb: Path
    #: The same package re-packed with a higher Debian revision: the upgrade.
    upgrade: Path
    version: str
    upgrade_version: str


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "building and installing packages needs root"
    missing = [t for t in ("dpkg-deb", "lintian", "apt-get", "strip") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not found: run scripts/setup as root"
    return None


def _repack(deb: Path, revision: str, out: Path) -> tuple[Path, str]:
    """``deb`` with Debian revision ``revision``: what ``scripts/package --revision`` makes
    of the same source, without building the virtualenv again."""
    tree = out / f"repack-{revision}"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    lines = control.read_text().splitlines()
    (version,) = (line.split(": ", 1)[1] for line in lines if line.startswith("Version: "))
    new_version = version.rsplit("-", 1)[0] + f"-{revision}"
    control.write_text(
        "\n".join(
            f"Version: {new_version}" if line.startswith("Version: ") else line for line in lines
        )
        + "\n"
    )
    target = out / deb.name.replace(f"_{version}_", f"_{new_version}_")
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(tree), str(target)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    shutil.rmtree(tree)
    return target, new_version


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Built:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent
    out = shared / "tether-package"
    with (shared / "tether-package.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = out / "built"
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            result = subprocess.run(
                [str(ROOT / "scripts" / "package"), "--out", str(out), "--revision", "1"],
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert result.returncode == 0, result.stderr
            (deb,) = out.glob("tether_*-1_*.deb")
            _repack(deb, "2", out)
            done.write_text("")
    (wheel,) = out.glob("tether-*.whl")
    (deb,) = out.glob("tether_*-1_*.deb")
    (upgrade,) = out.glob("tether_*-2_*.deb")
    return Built(
        wheel=wheel,
        deb=deb,
        upgrade=upgrade,
        version=deb.name.split("_")[1],
        upgrade_version=upgrade.name.split("_")[1],
    )
