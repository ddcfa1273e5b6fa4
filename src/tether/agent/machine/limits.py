"""What one support grant allows: shell, file transfer, sudo, session length (pure, no I/O).

Chosen by the customer when opening access and kept in the access state. The machine
enforces them, never the engineer's client:

- **sudo**: without it the support account gets no sudoers file at all;
- **shell**: without it sshd refuses a terminal (``PermitTTY no``) and the session
  recorder (sshd's ``ForceCommand``) refuses every login shell and command, leaving
  only ``sftp`` and ``scp``, each run directly (never through a shell);
- **file transfer**: the recorder refuses SFTP and legacy ``scp`` sessions, or runs
  ``sftp-server`` read-only (download only) or with reads refused (upload only);
- **session length**: the recorder ends a session when its time is up;
- **consent**: the recorder holds each login until the customer admits it
  (``tether access admit``) and refuses it when the customer refuses or does not
  answer within ``consent_timeout`` (or admits it then, with ``auto_admit``:
  the customer has that long to refuse). The decision is a file only root may write
  (:mod:`tether.agent.consent`).

The recorder does the last four, so they need recording on. With a shell allowed,
limiting file transfer stops the transfer *protocols*; what a shell prints can still
be copied from the terminal (and is recorded).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from tether.durations import format_duration
from tether.errors import BadInput

#: The longest session a grant may set (the recorder's argument is whole seconds).
LONGEST_SESSION = timedelta(days=366)
#: How long a login waits for the customer's decision unless the grant says otherwise.
DEFAULT_CONSENT_TIMEOUT = timedelta(minutes=5)


class FileTransfer(Enum):
    """Which way files may cross with ``sftp`` / ``scp``."""

    BOTH = "both"
    OFF = "off"
    DOWNLOAD = "download"
    UPLOAD = "upload"


@dataclass(frozen=True)
class Limits:
    """What a grant allows; the default allows everything (as before limits existed).

    :param shell: interactive logins and commands (else file transfer only).
    :param files: file transfer with ``sftp`` / ``scp``.
    :param sudo: administrator rights through ``sudo``.
    :param max_session: each session ends after this long (None: no limit).
    :param consent: each login waits for the customer to admit it.
    :param consent_timeout: a login nobody decided on by then is refused ...
    :param auto_admit: ... or admitted (``--auto-admit-after``).
    """

    shell: bool = True
    files: FileTransfer = FileTransfer.BOTH
    sudo: bool = True
    max_session: timedelta | None = None
    consent: bool = False
    consent_timeout: timedelta = DEFAULT_CONSENT_TIMEOUT
    auto_admit: bool = False

    def __post_init__(self) -> None:
        if not self.shell and self.files == FileTransfer.OFF:
            raise BadInput(
                "no shell and no file transfer would allow nothing: allow one of them "
                "(drop --no-shell, or choose --files download/upload/both)"
            )
        if self.max_session is not None and not (
            timedelta(seconds=1) <= self.max_session <= LONGEST_SESSION
        ):
            raise BadInput("--max-session must be between 1s and 366d")
        if not timedelta(seconds=1) <= self.consent_timeout <= timedelta(days=1):
            raise BadInput("--consent-timeout must be between 1s and 1d")
        if self.auto_admit and not self.consent:
            raise BadInput("--auto-admit-after applies only with --consent ask")

    @property
    def restricted(self) -> bool:
        """Whether anything is limited at all."""
        return self != Limits()

    @property
    def needs_recorder(self) -> bool:
        """Whether a limit is enforced by the session recorder (not sshd or sudoers alone)."""
        return (
            not self.shell
            or self.files != FileTransfer.BOTH
            or self.max_session is not None
            or self.consent
        )

    def recorder_args(self, consent_dir: Path | None = None) -> list[str]:
        """The recorder's options for these limits (appended to sshd's ForceCommand).

        :param consent_dir: where the customer's decisions appear (with ``consent``).
        """
        args: list[str] = []
        if self.consent and consent_dir is not None:
            args += ["--consent-dir", str(consent_dir)]
            args += ["--consent-timeout", str(int(self.consent_timeout.total_seconds()))]
            if self.auto_admit:
                args += ["--consent-on-timeout", "admit"]
        if not self.shell:
            args.append("--no-shell")
        if self.files != FileTransfer.BOTH:
            args += ["--files", self.files.value]
        if not self.sudo:
            args.append("--no-sudo")  # only to tell the engineer; sudoers enforces it
        if self.max_session is not None:
            args += ["--max-time", str(int(self.max_session.total_seconds()))]
        return args

    def describe(self) -> list[str]:
        """The limits in words, one item each (empty when nothing is limited)."""
        words: list[str] = []
        if not self.shell:
            words.append("no shell (file transfer only)")
        if self.files == FileTransfer.OFF:
            words.append("no file transfer (sftp/scp)")
        elif self.files == FileTransfer.DOWNLOAD:
            words.append("file transfer: download only")
        elif self.files == FileTransfer.UPLOAD:
            words.append("file transfer: upload only")
        if not self.sudo:
            words.append("no administrator rights (sudo)")
        if self.max_session is not None:
            words.append(f"sessions end after {format_duration(self.max_session)}")
        if self.consent:
            words.append(
                "each login waits for the customer to admit it "
                f"({'admitted' if self.auto_admit else 'refused'} after "
                f"{format_duration(self.consent_timeout)} without an answer)"
            )
        return words

    def summary(self) -> str:
        """One line for ``tether access status``."""
        return "; ".join(self.describe()) or "none (shell, file transfer both ways, sudo)"

    def banner(self) -> str:
        """What sshd shows the engineer before login (its ``Banner``)."""
        lines = ["Tether support access: the customer limited what this grant allows:"]
        lines += [f"  - {item}" for item in self.describe()]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "shell": self.shell,
            "files": self.files.value,
            "sudo": self.sudo,
            "max_session_seconds": None
            if self.max_session is None
            else int(self.max_session.total_seconds()),
            "consent": "ask" if self.consent else "none",
            "consent_timeout_seconds": int(self.consent_timeout.total_seconds()),
            "consent_on_timeout": "admit" if self.auto_admit else "refuse",
        }

    @classmethod
    def from_json(cls, body: object) -> Limits:
        """Read :meth:`to_json`'s form; a missing body (older state files) allows everything."""
        if not isinstance(body, dict):
            return cls()
        seconds = body.get("max_session_seconds")
        wait = body.get("consent_timeout_seconds")
        return cls(
            shell=body.get("shell", True) is True,
            files=FileTransfer(body.get("files", FileTransfer.BOTH.value)),
            sudo=body.get("sudo", True) is True,
            max_session=timedelta(seconds=int(seconds)) if seconds is not None else None,
            consent=body.get("consent", "none") != "none",
            consent_timeout=timedelta(seconds=int(wait))
            if wait is not None
            else DEFAULT_CONSENT_TIMEOUT,
            auto_admit=body.get("consent_on_timeout") == "admit",
        )
