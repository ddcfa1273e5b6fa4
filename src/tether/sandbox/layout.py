"""Where a sandbox keeps things: the one place that names paths shared by its parts.

A sandbox's *workdir* (given by the caller) holds everything the sandbox writes::

    WORKDIR/
      root/                  private trees, mounted inside at the same path without "root/"
        etc/                 a full copy of the host's /etc (bound over /etc)
        home/ run/ var/log/  private directories (bound over /home, /run, /var/log, ...)
      shadow/                stand-ins for host directories that lack a needed mount point
      init.log               the namespace init's own log (stdout and stderr)
      uplink-host.log        the host-side uplink forwarder's log
      ready                  written by init once the machine is up (JSON)

The host process (:mod:`tether.sandbox.machine`), the namespace init
(:mod:`tether.sandbox.init`) and the forwarders (:mod:`tether.sandbox.uplink`) all take
their paths from here, so that they agree.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

#: Directory (under the workdir) whose subtree is mounted at ``/`` path by path.
ROOT_DIRNAME = "root"
#: Directory (under the workdir) for stand-ins of host directories (see ``init``).
SHADOW_DIRNAME = "shadow"
#: The init's log file name (under the workdir).
INIT_LOG_NAME = "init.log"
#: The host-side forwarder's log file name (under the workdir).
UPLINK_HOST_LOG_NAME = "uplink-host.log"
#: Written by init (under the workdir) when the machine is ready.
READY_NAME = "ready"

#: The whole of /etc inside is a private copy of the host's /etc.
ETC = "/etc"
#: Directories of the copied /etc that start empty instead of holding the host's files,
#: so that what an installer writes there is all that is there.
EMPTY_ETC_DIRS: tuple[str, ...] = ("/etc/tether", "/etc/cron.d", "/etc/systemd/system")

#: Private directories bound over these paths inside (ordered parents first). Each starts
#: empty, with the host directory's mode and owner when the host has that directory.
PRIVATE_DIRS: tuple[str, ...] = (
    "/home",
    "/root/.ssh",
    "/run",
    "/var/lib/sudo",
    "/var/lib/tether",
    "/var/log",
    "/var/mail",
)
#: Private temporary directories of a machine made with ``private_tmp`` (the demo's):
#: what is written there (``scp FILE SERIAL:/tmp/``) stays on the machine, as on a real
#: one. Mounted after everything else, because they hide a workdir under /tmp; tests
#: that hand the machine files from their tmp_path leave them shared.
TMP_DIRS: tuple[str, ...] = ("/tmp", "/var/tmp")
#: Mode of a private directory the host does not have.
PRIVATE_DIR_DEFAULT_MODES: dict[str, int] = {
    "/root/.ssh": 0o700,
    "/var/lib/sudo": 0o700,
    "/tmp": 0o1777,
    "/var/tmp": 0o1777,
}

#: Inside path of the directory holding one Unix socket per uplink port.
UPLINK_SOCKET_DIR = "/run/tether-sandbox/uplink"
#: sshd's pid file inside (also named in the generated sshd_config).
SSHD_PID_FILE = "/run/sshd.pid"
#: sshd's log inside (``sshd -E``).
SSHD_LOG_FILE = "/var/log/sshd.log"
#: The line a forwarder prints on stdout once it listens.
READY_LINE = "ready"

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,62}[A-Za-z0-9])?$")


def uplink_socket_name(port: int) -> str:
    """Return the file name (in :data:`UPLINK_SOCKET_DIR`) of the socket for ``port``."""
    return f"{port}.sock"


def private_prefixes(*, private_tmp: bool = False) -> tuple[str, ...]:
    """Return every inside path whose subtree is private to the sandbox."""
    return (ETC, *PRIVATE_DIRS, *(TMP_DIRS if private_tmp else ()))


def is_private(inside_path: str, *, private_tmp: bool = False) -> bool:
    """Tell whether ``inside_path`` (absolute) lies in a tree private to the sandbox."""
    path = posixpath.normpath(inside_path)
    prefixes = private_prefixes(private_tmp=private_tmp)
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def host_path(workdir: Path, inside_path: str, *, private_tmp: bool = False) -> Path:
    """Map an inside path in a private tree to where it is on the host.

    Raises:
        ValueError: ``inside_path`` is relative or not in a private tree (for example
            ``/usr/bin``, or ``/tmp`` unless ``private_tmp``: then the sandbox shares
            it with the host).
    """
    if not inside_path.startswith("/"):
        raise ValueError(f"{inside_path!r} is not an absolute path")
    path = posixpath.normpath(inside_path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if not is_private(path, private_tmp=private_tmp):
        raise ValueError(
            f"{inside_path!r} is shared with the host, not private to the sandbox "
            f"(private trees: {', '.join(private_prefixes(private_tmp=private_tmp))})"
        )
    return workdir / ROOT_DIRNAME / path.lstrip("/")


def check_hostname(hostname: str) -> str:
    """Return ``hostname`` if it is a valid host name, else raise ``ValueError``."""
    if not _HOSTNAME.match(hostname) or ".." in hostname:
        raise ValueError(
            f"{hostname!r} is not a valid host name (letters, digits, '-' and '.', "
            "at most 64 characters)"
        )
    return hostname


def check_workdir(workdir: Path) -> Path:
    """Return ``workdir`` made absolute; refuse one that the sandbox would hide.

    A workdir inside a tree that the sandbox replaces (``/etc``, ``/home``, ``/run``...)
    would vanish from view inside once the private trees are mounted.
    """
    resolved = workdir.resolve()
    if is_private(str(resolved)) or str(resolved) == "/":
        raise ValueError(
            f"sandbox workdir {resolved} is inside a tree the sandbox replaces "
            f"({', '.join(private_prefixes())}); use a directory under /tmp or /var/tmp"
        )
    return resolved
