"""The recorder's copy of Tether's code, for a package the support account cannot read.

sshd starts the recorder as the support account. Installed from a source checkout or
a virtualenv under a private (0700) directory, the package is out of its reach, and
every support session would be refused; the agent then copies the code into its
state directory. Needs root (files owned by root, a process run as ``nobody``).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.agent.machine import recorder_setup
from tether.agent.machine.files import Journal
from tether.agent.machine.recorder_setup import install_library, library_for, package_root

pytestmark = pytest.mark.sandbox
PYTHON = "/usr/bin/python3"


@pytest.fixture
def state_dir() -> Iterator[Path]:
    if os.geteuid() != 0 or not os.access(PYTHON, os.X_OK):
        pytest.skip("needs root and the system's python3")
    # Under /var/tmp (searchable by all), not pytest's 0700 tmp_path: nobody must reach it.
    top = Path(tempfile.mkdtemp(prefix="tether-lib-", dir="/var/tmp"))
    top.chmod(0o755)
    state = top / "state"
    state.mkdir(mode=0o700)
    try:
        yield state
    finally:
        shutil.rmtree(top)


def import_as_nobody(library: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--",
            "/usr/bin/env",
            "PYTHONSAFEPATH=1",
            f"PYTHONPATH={library}",
            PYTHON,
            "-s",
            "-c",
            "import tether.agent.recording.recorder.session as r; print(r.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_private_package_is_copied_where_the_account_can_import_it(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = state_dir.parent / "private"
    private.mkdir(mode=0o700)
    shutil.copytree(package_root() / "tether", private / "tether")
    monkeypatch.setattr(recorder_setup, "package_root", lambda: private)
    assert import_as_nobody(private).returncode != 0  # the situation being repaired

    library = library_for(state_dir)
    assert library == state_dir / "recorder-lib"
    journal = Journal()
    install_library(library, state_dir, journal)

    seen = import_as_nobody(library)
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.startswith(str(library))
    for path in (library, *library.rglob("*")):
        info = path.lstat()
        assert (info.st_uid, info.st_gid) == (0, 0), path
        assert stat.S_IMODE(info.st_mode) == (0o755 if path.is_dir() else 0o644), path
    copied = {p.relative_to(library).parts[:4] for p in library.rglob("*.py")}
    assert copied <= {  # the recorder's own package and the docstrings above it, no more
        ("tether", "__init__.py"),
        ("tether", "agent", "__init__.py"),
        ("tether", "agent", "recording", "__init__.py"),
        ("tether", "agent", "recording", "recorder"),
    }, copied
    # Opening access failed later: what this open added goes again.
    journal.rollback()
    assert not library.exists()
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700


def test_an_installed_package_everyone_can_read_is_used_in_place(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    public = state_dir.parent / "site"
    shutil.copytree(package_root() / "tether", public / "tether")
    for path in (public, *public.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    monkeypatch.setattr(recorder_setup, "package_root", lambda: public)
    assert library_for(state_dir) is None
    assert import_as_nobody(public).returncode == 0
