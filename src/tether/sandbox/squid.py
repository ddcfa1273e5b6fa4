"""Debian's Squid as a customer's HTTP proxy, for tests and demos of restrictive networks.

:class:`Squid` writes a small ``squid.conf`` (one ``http_port`` on loopback, ``CONNECT``
allowed only to the ports given, optional Basic authentication against a htpasswd-style
file checked by Squid's own ``basic_ncsa_auth``) and runs ``squid -N`` in the foreground
with everything (cache, logs, pid) in a directory the caller gives. Its access log is
kept, so a test can read what the proxy saw.

With ``inspect_tls`` (Debian's ``squid-openssl`` build) it is a TLS-inspecting proxy as
offices run them: every ``CONNECT`` is bumped (``ssl_bump peek`` then ``bump``), the
client sees a certificate for the target made on the fly and signed by the proxy's own CA,
and what is inside TLS but not HTTP is tunnelled on (``on_unsupported_protocol tunnel``),
or, with ``strict``, answered with an error page as Squid does by default: then only
HTTP (a WebSocket upgrade among it) passes inside the broken-open TLS.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tether.errors import NotReady

SQUID = "/usr/sbin/squid"
#: The user Debian's Squid drops to (its ``cache_effective_user``).
SQUID_USER = "proxy"
_NCSA = ("/usr/lib/squid/basic_ncsa_auth", "/usr/lib/squid3/basic_ncsa_auth")
#: Makes the certificates of a bumping Squid (in squid-openssl only).
CERTGEN = "/usr/lib/squid/security_file_certgen"


def squid_unavailable_reason() -> str | None:
    """Why Squid cannot run here (``None``: it can)."""
    if not Path(SQUID).exists() and shutil.which("squid") is None:
        return "Squid is not installed (Debian package squid-openssl; scripts/setup installs it)"
    if os.geteuid() != 0:
        return "Squid's test instance runs as root here (it drops to its own user)"
    return None


def ssl_bump_unavailable_reason() -> str | None:
    """Why a TLS-inspecting Squid cannot run here (``None``: it can)."""
    reason = squid_unavailable_reason()
    if reason is None and not Path(CERTGEN).exists():
        reason = "this Squid cannot inspect TLS (Debian squid-openssl has ssl-bump; squid not)"
    return reason


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _htpasswd(password: str) -> str:
    """An Apache MD5 (``$apr1$``) hash, which basic_ncsa_auth checks.

    The password goes to ``openssl passwd`` on stdin, never in its arguments.
    """
    done = subprocess.run(
        ["openssl", "passwd", "-apr1", "-stdin"],
        input=password.encode(),
        capture_output=True,
        check=True,
    )
    return done.stdout.decode().strip()


class Squid:
    """One Squid process: ``start()``, then ``port``, ``access_log()``, ``stop()``.

    :ivar workdir: where its configuration, logs and state go (a fresh directory under
        the system's temporary directory, removed by :meth:`stop`).
    :param connect_ports: the only ports ``CONNECT`` may reach (443 in a real office).
    :param users: ``{user: password}`` for Basic authentication; empty: none asked.
    :param allow_connect: ``False``: refuse every ``CONNECT`` (only plain HTTP and
        upgrades pass).
    :param inspect_tls: ``(CA certificate, CA key)`` PEM files: break open the TLS inside
        every ``CONNECT`` with certificates this CA signs; ``None``: tunnel it untouched.
    :param strict: with ``inspect_tls``, pass nothing but HTTP inside the TLS it broke
        open (Squid's default); otherwise other protocols are tunnelled on.
    :param plain_http: ``False``: refuse plain ``http://`` requests (and upgrades), as an
        office that lets only HTTPS out does; ``CONNECT`` and what is inside it pass.
    """

    def __init__(
        self,
        connect_ports: Sequence[int],
        *,
        users: dict[str, str] | None = None,
        allow_connect: bool = True,
        inspect_tls: tuple[Path, Path] | None = None,
        strict: bool = False,
        plain_http: bool = True,
    ) -> None:
        self.workdir = Path()
        self.strict = strict
        self.plain_http = plain_http
        self.connect_ports = tuple(connect_ports)
        self.users = dict(users or {})
        self.allow_connect = allow_connect
        self.inspect_tls = inspect_tls
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def render(self) -> str:
        w = self.workdir
        ports = " ".join(str(p) for p in self.connect_ports)
        listen = f"http_port 127.0.0.1:{self.port}"
        if self.inspect_tls is not None:
            listen += (
                f" ssl-bump tls-cert={w / 'ca.pem'} tls-key={w / 'ca.key'}"
                " generate-host-certificates=on dynamic_cert_mem_cache_size=4MB"
            )
        lines = [
            listen,
            f"pid_filename {w / 'squid.pid'}",
            f"access_log stdio:{w / 'access.log'}",
            f"cache_log {w / 'cache.log'}",
            "cache_store_log none",
            "cache deny all",
            f"coredump_dir {w}",
            "shutdown_lifetime 0 seconds",
            f"visible_hostname squid-{secrets.token_hex(3)}",
            "acl tunnel_ports port " + ports,
            "acl CONNECT method CONNECT",
            # Browsers (and wsproto) send "Upgrade: websocket"; Squid matches names as written.
            "http_upgrade_request_protocols websocket allow all",
        ]
        if self.inspect_tls is not None:
            lines += [
                f"sslcrtd_program {CERTGEN} -s {w / 'ssl_db'} -M 4MB",
                "sslcrtd_children 2 startup=1 idle=1",
                "acl step1 at_step SslBump1",
                "ssl_bump peek step1",
                "ssl_bump bump all",
                # The relay's own certificate is self-signed: the proxy takes it anyway
                # (the agent does too: the SSH inside is what it trusts).
                "tls_outgoing_options flags=DONT_VERIFY_PEER",
                "sslproxy_cert_error allow all",
            ]
            if not self.strict:
                # SSH inside the bumped TLS is not HTTP: pass it on, as offices do for
                # the protocols they do not understand.
                lines.append("on_unsupported_protocol tunnel all")
        if self.users:
            helper = next((h for h in _NCSA if Path(h).exists()), _NCSA[0])
            lines += [
                f"auth_param basic program {helper} {w / 'passwords'}",
                "auth_param basic realm proxy",
                "acl people proxy_auth REQUIRED",
                "http_access deny !people",
            ]
        if not self.allow_connect:
            lines.append("http_access deny CONNECT")
        if not self.plain_http:
            # Requests bumped out of TLS are https:// ones; CONNECT has a protocol of its own.
            lines += ["acl plain_http proto HTTP", "http_access deny plain_http"]
        lines += ["http_access deny CONNECT !tunnel_ports", "http_access allow all"]
        return "\n".join(lines) + "\n"

    @property
    def pid(self) -> int | None:
        """The running Squid's process id (it runs in the foreground, ``-N``: one process)."""
        return None if self._proc is None else self._proc.pid

    def start(self, timeout: float = 20.0) -> None:
        """Write the files, start Squid, and wait until its port answers."""
        # Squid drops to its own user (``proxy``), which must reach and write this
        # directory: a test's tmp_path sits under a root-only directory.
        self.workdir = Path(tempfile.mkdtemp(prefix="tether-squid-"))
        shutil.chown(self.workdir, SQUID_USER, SQUID_USER)
        self.port = _free_port()
        if self.users:
            text = "".join(f"{u}:{_htpasswd(p)}\n" for u, p in self.users.items())
            (self.workdir / "passwords").write_text(text)
            shutil.chown(self.workdir / "passwords", SQUID_USER, SQUID_USER)
            os.chmod(self.workdir / "passwords", 0o600)
        if self.inspect_tls is not None:
            self._prepare_inspection(*self.inspect_tls)
        conf = self.workdir / "squid.conf"
        conf.write_text(self.render())
        log = open(self.workdir / "squid.out", "ab")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [SQUID, "-N", "-f", str(conf)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NotReady(f"squid exited: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise NotReady(f"squid did not listen within {timeout:g} s: {self.log_tail()}")

    def _prepare_inspection(self, ca_cert: Path, ca_key: Path) -> None:
        """Copy the CA where Squid's user reads it, and make the certificate store."""
        for source, name in ((ca_cert, "ca.pem"), (ca_key, "ca.key")):
            target = self.workdir / name
            shutil.copyfile(source, target)
            os.chmod(target, 0o600)
            shutil.chown(target, SQUID_USER, SQUID_USER)
        store = self.workdir / "ssl_db"
        subprocess.run(
            [CERTGEN, "-c", "-s", str(store), "-M", "4MB"], capture_output=True, check=True
        )
        for path in (store, *store.rglob("*")):
            shutil.chown(path, SQUID_USER, SQUID_USER)

    def log_tail(self) -> str:
        texts = []
        for name in ("squid.out", "cache.log"):
            path = self.workdir / name
            if path.exists():
                texts.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(texts)

    def access_log(self) -> str:
        path = self.workdir / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def cleanup(self) -> None:
        """Stop, and remove the working directory."""
        self.stop()
        if self.workdir.name.startswith("tether-squid-"):
            shutil.rmtree(self.workdir, ignore_errors=True)


__all__ = ["SQUID", "Squid", "squid_unavailable_reason", "ssl_bump_unavailable_reason"]
