"""``tether agent install``: run the agent as a service and the expiry check every minute.

The expiry check (``tether access expire``) is the layer that closes access on time
when the agent daemon is dead: a systemd timer where systemd runs, else a cron entry.
Installing twice rewrites the same files.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tether.config import AgentConfig
from tether.errors import NotReady

SYSTEMD_RUNNING = Path("/run/systemd/system")


@dataclass(frozen=True)
class InstallReport:
    scheduler: str  # "systemd" | "cron"
    files: tuple[Path, ...]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)
    return path


def install(config: AgentConfig, command: list[str]) -> InstallReport:
    """Install the agent service and the per-minute expiry check.

    :param command: how to run ``tether`` (e.g. ``[sys.executable, "-m", "tether"]``).
    """
    base = " ".join(shlex.quote(part) for part in command)
    cfg = shlex.quote(str(config.path))
    if SYSTEMD_RUNNING.exists():
        files = (
            _write(
                config.systemd_dir / "tether-agent.service",
                (
                    "[Unit]\nDescription=Tether support-access agent\nAfter=network-online.target\n"
                    "Wants=network-online.target\n\n[Service]\n"
                    f"ExecStart={base} agent serve --config {cfg}\nRestart=always\nRestartSec=2\n\n"
                    "[Install]\nWantedBy=multi-user.target\n"
                ),
            ),
            _write(
                config.systemd_dir / "tether-expire.service",
                (
                    "[Unit]\nDescription=Close Tether support access whose time is up\n\n"
                    f"[Service]\nType=oneshot\nExecStart={base} access expire --config {cfg}\n"
                ),
            ),
            _write(
                config.systemd_dir / "tether-expire.timer",
                (
                    "[Unit]\nDescription=Close Tether support access on time, even without the agent\n\n"
                    "[Timer]\nOnBootSec=30s\nOnUnitActiveSec=30s\nAccuracySec=1s\nPersistent=true\n\n"
                    "[Install]\nWantedBy=timers.target\n"
                ),
            ),
        )
        for args in (
            ["daemon-reload"],
            ["enable", "--now", "tether-agent.service", "tether-expire.timer"],
        ):
            result = subprocess.run(
                ["systemctl", *args], capture_output=True, text=True, timeout=60
            )
            if result.returncode != 0:
                raise NotReady(f"systemctl {' '.join(args)} failed: {result.stderr.strip()}")
        return InstallReport("systemd", files)
    if not config.cron_dir.is_dir():
        raise NotReady(
            f"neither systemd nor cron ({config.cron_dir}) is available: install cron "
            "(apt-get install cron) so access closes on time even when the agent is down"
        )
    # cron's finest step is a minute: a second line half a minute later keeps the worst
    # case (expiry just after a run) at 30 s plus the run, within the 60 s budget.
    expire = f"{base} access expire --config {cfg} >/dev/null 2>&1"
    line = f"* * * * * root {expire}\n* * * * * root sleep 30; {expire}\n"
    entry = _write(config.cron_dir / "tether", "# Tether: close support access on time.\n" + line)
    return InstallReport("cron", (entry,))


def cron_command(entry: Path) -> list[str]:
    """The command a cron entry written by :func:`install` runs (for tests and `check`)."""
    for line in entry.read_text().splitlines():
        if line and not line.startswith("#"):
            fields = line.split(None, 6)
            return shlex.split(fields[6].split(">/dev/null")[0])
    raise NotReady(f"{entry} holds no command")
