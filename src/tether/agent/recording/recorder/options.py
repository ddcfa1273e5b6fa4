"""The session recorder's command line (stdlib only; no argparse: every session pays for its import).

sshd's ForceCommand, written by the agent, holds these options: the recordings
directory and, for a grant with limits, what the grant allows.
"""

from __future__ import annotations

from pathlib import Path

from tether.agent.recording.recorder.context import (
    FILES_BOTH,
    FILES_DOWNLOAD,
    FILES_OFF,
    FILES_UPLOAD,
)

#: Output recorded per session before the recording stops (the session goes on).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: Exit status of a session the recorder refused or could not start.
REFUSED = 255


class Options:
    """The recorder's command line (written by the agent into sshd's ForceCommand)."""

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.serial = ""
        self.fail = "closed"
        self.max_bytes = DEFAULT_MAX_BYTES
        self.sftp_server: str | None = None
        self.check = False
        #: The grant's limits (see :mod:`tether.agent.machine.limits`).
        self.shell = True
        self.files = FILES_BOTH
        self.sudo = True
        self.max_time = 0
        #: Where the customer's admit/refuse decisions appear (None: no consent asked).
        self.consent_dir: Path | None = None
        self.consent_timeout = 300
        #: What no answer within ``consent_timeout`` means: refuse (or admit).
        self.consent_on_timeout = "refuse"

    def limits(self) -> list[str]:
        """The grant's limits in words (empty when nothing is limited)."""
        words = [] if self.shell else ["no shell (file transfer only)"]
        if self.files != FILES_BOTH:
            words.append({FILES_OFF: "no file transfer"}.get(self.files, f"{self.files} only"))
        if not self.sudo:
            words.append("no sudo")
        if self.max_time:
            words.append(f"sessions end after {self.max_time} s")
        return words


USAGE = (
    "usage: python -m tether.agent.recording.recorder --dir DIR [--serial S] [--fail closed|open]\n"
    "       [--max-bytes N] [--sftp-server PATH] [--check]\n"
    "       [--no-shell] [--files both|off|download|upload] [--no-sudo] [--max-time SECONDS]\n"
    "       [--consent-dir DIR [--consent-timeout SECONDS]\n"
    "        [--consent-on-timeout admit|refuse]]\n"
    "Records a support session; sshd runs it as the support account's ForceCommand."
)


def parse_args(argv: list[str]) -> Options:
    """Read the recorder's options (no argparse: every session pays for its import).

    Raises:
        ValueError: an unknown option or a bad value (the message says which).
    """
    options = Options()
    words = list(argv)
    while words:
        word = words.pop(0)
        if word in ("--check", "--no-shell", "--no-sudo"):
            options.check |= word == "--check"
            options.shell &= word != "--no-shell"
            options.sudo &= word != "--no-sudo"
            continue
        if word not in (
            "--dir",
            "--serial",
            "--fail",
            "--max-bytes",
            "--sftp-server",
            "--files",
            "--max-time",
            "--consent-dir",
            "--consent-timeout",
            "--consent-on-timeout",
        ):
            raise ValueError(f"unknown option {word!r}")
        if not words:
            raise ValueError(f"{word} needs a value")
        value = words.pop(0)
        if word == "--dir":
            options.dir = Path(value)
        elif word == "--serial":
            options.serial = value
        elif word == "--fail":
            if value not in ("closed", "open"):
                raise ValueError("--fail is closed or open")
            options.fail = value
        elif word == "--max-bytes":
            if not value.isdigit():
                raise ValueError("--max-bytes is a number of bytes")
            options.max_bytes = int(value)
        elif word == "--files":
            if value not in (FILES_BOTH, FILES_OFF, FILES_DOWNLOAD, FILES_UPLOAD):
                raise ValueError("--files is both, off, download or upload")
            options.files = value
        elif word == "--consent-dir":
            options.consent_dir = Path(value)
        elif word == "--consent-on-timeout":
            if value not in ("admit", "refuse"):
                raise ValueError("--consent-on-timeout is admit or refuse")
            options.consent_on_timeout = value
        elif word == "--consent-timeout":
            if not value.isdigit():
                raise ValueError("--consent-timeout is a number of seconds")
            options.consent_timeout = int(value)
        elif word == "--max-time":
            if not value.isdigit():
                raise ValueError("--max-time is a number of seconds")
            options.max_time = int(value)
        else:
            options.sftp_server = value
    if options.dir is None:
        raise ValueError("--dir is required")
    return options
