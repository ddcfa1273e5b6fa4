"""Pure helpers of the session recorder: who the engineer is, what the session is (stdlib only).

Kept apart from :mod:`tether.agent.recording.recorder.session` (processes, ptys, signals) so they are
tested without a session.
"""

from __future__ import annotations

import base64
import binascii
import os
import shlex
import struct

#: Where OpenSSH's sftp-server lives on the distributions Tether knows.
SFTP_SERVERS = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sftp-server",
    "/usr/lib/ssh/sftp-server",
)

#: Public-key fields (each an SSH string or mpint) between the nonce and the serial of a
#: certificate, per key type (OpenSSH PROTOCOL.certkeys).
_CERT_KEY_FIELDS = {
    "ssh-rsa-cert-v01@openssh.com": 2,
    "ssh-dss-cert-v01@openssh.com": 4,
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": 2,
    "ssh-ed25519-cert-v01@openssh.com": 1,
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": 3,
    "sk-ssh-ed25519-cert-v01@openssh.com": 2,
}


def _string(blob: bytes, at: int) -> tuple[bytes, int]:
    (size,) = struct.unpack_from(">I", blob, at)
    at += 4
    if at + size > len(blob):
        raise ValueError("string past the end of the certificate")
    return blob[at : at + size], at + size


def certificate_key_id(line: str) -> str | None:
    """Return the key id of an OpenSSH certificate line (``type base64 [comment]``).

    None if the line is not a certificate Tether can read.
    """
    parts = line.split()
    if len(parts) < 2 or parts[0] not in _CERT_KEY_FIELDS:
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
        kind, at = _string(blob, 0)
        if kind.decode() != parts[0]:
            return None
        _, at = _string(blob, at)  # nonce
        for _ in range(_CERT_KEY_FIELDS[parts[0]]):
            _, at = _string(blob, at)
        at += 8 + 4  # serial, type
        key_id, _ = _string(blob, at)
    except (ValueError, binascii.Error, struct.error, UnicodeDecodeError):
        return None
    text = key_id.decode("utf-8", errors="replace")
    return "".join(c for c in text if c.isprintable())[:128] or None


def engineer_from_auth_info(text: str) -> str | None:
    """Return the engineer named by sshd's ``SSH_USER_AUTH`` file (ExposeAuthInfo).

    Each line is a method that authenticated the user; the first ``publickey`` line
    whose key is a certificate gives the certificate's key id (Tether's engineer
    certificates carry the engineer's name there).
    """
    for line in text.splitlines():
        method, _, rest = line.partition(" ")
        if method == "publickey":
            key_id = certificate_key_id(rest)
            if key_id is not None:
                return key_id
    return None


def read_engineer(environ: dict[str, str]) -> str:
    """Return the engineer's name for this session, or ``"unknown"``."""
    path = environ.get("SSH_USER_AUTH")
    if not path:
        return "unknown"
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            return engineer_from_auth_info(stream.read(1 << 16)) or "unknown"
    except OSError:
        return "unknown"


class SessionPlan:
    """What to run for a session and how to record it.

    :param kind: ``shell`` (login shell), ``command``, ``sftp`` or ``scp``.
    :param argv: the program and its arguments.
    :param argv0: the name the program sees (``-bash`` for a login shell).
    :param command: SSH_ORIGINAL_COMMAND, as the engineer sent it (None for a shell).
    :param scp_mode: for ``scp``: ``t`` (the engineer uploads) or ``f`` (downloads).
    """

    def __init__(
        self,
        kind: str,
        argv: list[str],
        argv0: str,
        command: str | None,
        *,
        scp_mode: str | None = None,
        scp_target: str | None = None,
    ) -> None:
        self.kind = kind
        self.argv = argv
        self.argv0 = argv0
        self.command = command
        self.scp_mode = scp_mode
        self.scp_target = scp_target


def find_sftp_server(candidates: tuple[str, ...] = SFTP_SERVERS) -> str | None:
    """Return the first executable sftp-server among ``candidates``."""
    return next((p for p in candidates if os.access(p, os.X_OK)), None)


def plan_session(shell: str, command: str | None, sftp_server: str | None) -> SessionPlan:
    """Decide how to run a session of a user whose login shell is ``shell``.

    No command: the login shell as a login shell. An SFTP subsystem (sshd passes the
    configured ``Subsystem`` command, ``internal-sftp`` or an sftp-server path, as
    SSH_ORIGINAL_COMMAND): the real sftp-server, so transfers can be followed (the
    recorder cannot host ``internal-sftp``, which lives inside sshd). ``scp -t`` /
    ``scp -f`` (legacy scp protocol): run as asked, transfers followed. Anything
    else: ``shell -c COMMAND``, as sshd itself would.
    """
    shell = shell or "/bin/sh"
    if not command:
        return SessionPlan("shell", [shell], "-" + os.path.basename(shell), None)
    try:
        words = shlex.split(command)
    except ValueError:
        words = []
    first = words[0] if words else ""
    if first == "internal-sftp" or os.path.basename(first) == "sftp-server":
        # Only a known sftp-server: any program named so (one the engineer uploaded)
        # would otherwise run outside the grant's limits.
        known = (*SFTP_SERVERS, sftp_server)
        server = first if first in known and os.access(first, os.X_OK) else sftp_server
        if server is not None:
            # internal-sftp takes sftp-server's options; keep them.
            return SessionPlan("sftp", [server, *words[1:]], server, command)
    if first == "scp" and len(words) >= 2:
        modes = [w for w in words[1:] if w.startswith("-") and ("t" in w or "f" in w)]
        mode = None
        for flag in modes:
            mode = "t" if "t" in flag[1:] else "f"
        if mode is not None:
            target = words[-1] if not words[-1].startswith("-") else None
            return SessionPlan(
                "scp", [shell, "-c", command], shell, command, scp_mode=mode, scp_target=target
            )
    return SessionPlan("command", [shell, "-c", command], shell, command)


class ScpLog:
    """Follows the legacy scp protocol's data direction: file names and sizes.

    The side that sends files writes ``C<mode> <size> <name>\\n``, then ``size`` bytes
    and a NUL; ``D``/``E`` enter and leave directories, ``T`` gives times. Feed it the
    bytes flowing from the sending side.
    """

    def __init__(self, op: str, max_files: int = 1000) -> None:
        self.op = op
        self.files: list[dict[str, object]] = []
        self.dropped = 0
        self._max = max_files
        self._line = bytearray()
        self._skip = 0
        self._dirs: list[str] = []

    def moving(self) -> list[dict[str, object]]:
        """The file being copied now (its name and size), if one is."""
        if self.files and 0 < self._skip < 1 << 62:
            return [self.files[-1]]
        return []

    def feed(self, data: bytes) -> None:
        at = 0
        while at < len(data):
            if self._skip:
                take = min(self._skip, len(data) - at)
                self._skip -= take
                at += take
                continue
            end = data.find(b"\n", at)
            if end < 0:
                self._line += data[at:]
                if len(self._line) > 4096:  # not the protocol: stop following
                    self._skip = 1 << 62
                return
            self._line += data[at:end]
            at = end + 1
            self._control(bytes(self._line).lstrip(b"\0"))
            self._line.clear()

    def _control(self, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace")
        if text.startswith(("C", "D")):
            parts = text[1:].split(" ", 2)
            if len(parts) != 3 or not parts[1].isdigit():
                return
            name = "/".join([*self._dirs, parts[2]])
            if text[0] == "D":
                self._dirs.append(parts[2])
                return
            size = int(parts[1])
            if len(self.files) < self._max:
                self.files.append({"op": self.op, "path": name, "bytes": size})
            else:
                self.dropped += 1
            self._skip = size + 1  # the data, then its NUL
        elif text.startswith("E") and self._dirs:
            self._dirs.pop()


#: ``--files`` values of the recorder (the grant's file transfer limit).
FILES_BOTH, FILES_OFF, FILES_DOWNLOAD, FILES_UPLOAD = "both", "off", "download", "upload"
#: sftp-server options per file transfer limit: read-only, or no reading of files.
SFTP_SERVER_OPTIONS = {FILES_DOWNLOAD: ["-R"], FILES_UPLOAD: ["-P", "read,readdir,copy-data"]}
#: Flags of the legacy scp protocol's remote side that a grant without a shell accepts.
_SCP_FLAGS = frozenset("tfrpdvq")


def _scp_direct(command: str, scp: str) -> list[str] | None:
    """``scp -t/-f`` as an argument list run without a shell, or None if it is not plain.

    Plain: flags from :data:`_SCP_FLAGS` (exactly one of ``t`` / ``f``), then at most
    one target. Anything else (``;``, ``$(...)`` ... are words here, not commands)
    could only be the engineer trying to reach a shell.
    """
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if not words or words[0] != "scp":
        return None
    count = next((i for i, w in enumerate(words[1:]) if not w.startswith("-")), len(words) - 1)
    flags, rest = words[1 : 1 + count], words[1 + count :]
    letters = "".join(f[1:] for f in flags)
    if any(not f[1:] or set(f[1:]) - _SCP_FLAGS for f in flags) or len(rest) > 1:
        return None
    if ("t" in letters) == ("f" in letters):
        return None
    return [scp, *words[1:]]


def apply_limits(
    plan: SessionPlan, *, allow_shell: bool, files: str, scp: str = "/usr/bin/scp"
) -> tuple[SessionPlan | None, str | None]:
    """Fit ``plan`` to the grant's limits: (the plan to run, None) or (None, why not).

    Without a shell, login shells and commands are refused and legacy scp runs
    directly (:func:`_scp_direct`), never through the account's shell. File transfer
    off refuses SFTP and scp; download only runs sftp-server read-only and refuses
    ``scp -t``; upload only refuses reading files over SFTP and ``scp -f``. A legacy
    scp that names both or neither direction is refused whenever a limit applies.
    """
    if plan.kind in ("shell", "command"):
        if not allow_shell:
            return None, "this support grant allows no shell or commands, only file transfer"
        return plan, None
    if files == FILES_OFF:
        return None, "file transfer (sftp, scp) is off for this support grant"
    if plan.kind == "sftp":
        options = SFTP_SERVER_OPTIONS.get(files, [])
        limited = SessionPlan("sftp", [*plan.argv, *options], plan.argv0, plan.command)
        return limited, None
    # Legacy scp: its direction must be certain before any limit can be applied.
    direct = _scp_direct(plan.command or "", scp)
    if direct is None and (not allow_shell or files != FILES_BOTH):
        return None, "this scp command is not a plain upload or download (scp -t / scp -f)"
    if files == FILES_DOWNLOAD and plan.scp_mode == "t":
        return None, "this support grant allows downloads only: uploads are refused"
    if files == FILES_UPLOAD and plan.scp_mode == "f":
        return None, "this support grant allows uploads only: downloads are refused"
    if allow_shell or direct is None:
        return plan, None
    return (
        SessionPlan(
            "scp",
            direct,
            direct[0],
            plan.command,
            scp_mode=plan.scp_mode,
            scp_target=plan.scp_target,
        ),
        None,
    )


def time_up_message(seconds: int) -> str:
    """What the engineer reads when the grant's session length is reached."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return f"this support grant ends sessions after {''.join(parts)}: the session ends now"


def scp_program() -> str:
    """The machine's scp (run directly for a grant without a shell)."""
    candidates = ("/usr/bin/scp", "/bin/scp", "/usr/local/bin/scp")
    return next((p for p in candidates if os.access(p, os.X_OK)), candidates[0])
