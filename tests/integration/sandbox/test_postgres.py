"""LocalPostgres: a private server that restarts in place, and errors that say what to do."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.postgres import postgres_directory, start_postgres
from tether.errors import NotReady
from tether.sandbox.postgres import (
    LocalPostgres,
    PostgresCannotRun,
    PostgresFailed,
    find_postgres_bindir,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def directory() -> Iterator[Path]:
    base = postgres_directory()
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_restart_brings_back_the_same_data_on_the_same_port(directory: Path) -> None:
    server = start_postgres(directory)
    try:
        url = server.create_database("kept")
        server.psql("CREATE TABLE t (v text); INSERT INTO t VALUES ('before')", database="kept")
        port = server.port
        server.stop()
        with pytest.raises(PostgresFailed, match="psql"):
            server.psql("SELECT 1")
        server.restart()
        assert server.port == port
        assert server.url("kept") == url  # URLs handed out before the outage still work
        assert server.psql("SELECT v FROM t", database="kept").split() == ["before"]
    finally:
        server.close()
    assert not server.running


def test_a_cluster_that_exists_already_is_refused_with_initdbs_reason(directory: Path) -> None:
    if find_postgres_bindir() is None:
        pytest.skip("PostgreSQL server binaries not found; install postgresql")
    data = directory / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    with pytest.raises(PostgresFailed, match=r"initdb into .* failed") as err:
        LocalPostgres(directory).start()
    assert isinstance(err.value, NotReady)
    assert "not empty" in str(err.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
def test_a_directory_the_server_user_cannot_enter_is_refused_saying_so(directory: Path) -> None:
    if find_postgres_bindir() is None:
        pytest.skip("PostgreSQL server binaries not found; install postgresql")
    directory.chmod(0o700)  # root's own, as mktemp -d makes it
    server = LocalPostgres(directory / "pg")
    with pytest.raises(PostgresCannotRun, match=f"may not enter {directory} \\(mode 700\\)") as err:
        server.start()
    assert "directory that user can reach" in str(err.value)
    assert not (directory / "pg").exists()  # nothing was created
    assert server.password not in str(err.value)
