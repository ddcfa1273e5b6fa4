"""``tether agent install``: run the agent as a service and the expiry check every minute.

The expiry check (``tether access expire``) is the layer that closes access on time
when the agent daemon is dead: a systemd timer where systemd runs, else a cron entry.
Installing twice rewrites the same files.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tether.config import AgentConfig
from tether.errors import NotReady

SYSTEMD_RUNNING = Path("/run/systemd/system")
#: Where Debian's (and others') cron daemons live: a cron entry without one never runs.
CRON_DAEMONS = (Path("/usr/sbin/cron"), Path("/usr/sbin/crond"), Path("/usr/bin/crond"))
EXPIRE_TIMER = "tether-expire.timer"
CRON_ENTRY = "tether"


def cron_daemon() -> Path | None:
    """The cron daemon of this machine, if one is installed."""
    return next((p for p in CRON_DAEMONS if os.access(p, os.X_OK)), None)


def installed_closer(config: AgentConfig) -> str | None:
    """Which installed timer closes access when the agent is dead (None: none can).

    ``"systemd timer"`` when systemd runs the machine and the timer is installed,
    ``"cron"`` when the cron entry is installed and a cron daemon is present.
    """
    if SYSTEMD_RUNNING.exists() and (config.systemd_dir / EXPIRE_TIMER).exists():
        return "systemd timer"
    if (config.cron_dir / CRON_ENTRY).exists() and cron_daemon() is not None:
        return "cron"
    return None


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


#: Why the agent's unit has no ``User=`` and no ``ProtectSystem=``: said in the unit itself.
_AGENT_RUNS_AS_ROOT = (
    "# The agent runs as root by design: to open and close support access it creates and\n"
    "# removes the support account (useradd, chage, userdel), writes sudoers and sshd's\n"
    "# drop-in under /etc, validates and reloads sshd, and ends live support sessions.\n"
    "# So no User=, ProtectSystem= or NoNewPrivileges=; only what none of that needs is cut.\n"
)


def systemd_units(command: list[str], config_path: Path) -> dict[str, str]:
    """The agent's systemd units, by file name: the daemon, the expiry check and its timer.

    One text for ``tether agent install`` and for the Debian package (``scripts/package``),
    so both run the agent and close access on time the same way.

    :param command: how to run ``tether`` (e.g. ``["/usr/bin/tether"]``).
    :param config_path: the agent's configuration file; the units do nothing without it.
    """
    base = " ".join(shlex.quote(part) for part in command)
    cfg = shlex.quote(str(config_path))
    condition = f"ConditionPathExists={config_path}\n"
    # Optional: the service's environment (HTTPS_PROXY / NO_PROXY, TETHER_LOG_FORMAT).
    environment = f"EnvironmentFile=-{config_path.parent / 'tether.env'}\n"
    return {
        "tether-agent.service": (
            "[Unit]\nDescription=Tether support-access agent\nAfter=network-online.target\n"
            f"Wants=network-online.target\n{condition}\n[Service]\n{_AGENT_RUNS_AS_ROOT}"
            f"{environment}ExecStart={base} agent serve --config {cfg}\nRestart=always\nRestartSec=2\n"
            "ProtectKernelModules=yes\nProtectKernelTunables=yes\nProtectControlGroups=yes\n"
            "ProtectClock=yes\nRestrictRealtime=yes\nLockPersonality=yes\n\n"
            "[Install]\nWantedBy=multi-user.target\n"
        ),
        "tether-expire.service": (
            f"[Unit]\nDescription=Close Tether support access whose time is up\n{condition}\n"
            f"[Service]\nType=oneshot\n{_AGENT_RUNS_AS_ROOT}"
            f"{environment}ExecStart={base} access expire --config {cfg}\n"
        ),
        EXPIRE_TIMER: (
            "[Unit]\nDescription=Close Tether support access on time, even without the agent\n\n"
            "[Timer]\nOnBootSec=30s\nOnUnitActiveSec=30s\nAccuracySec=1s\nPersistent=true\n\n"
            "[Install]\nWantedBy=timers.target\n"
        ),
    }


def install(config: AgentConfig, command: list[str]) -> InstallReport:
    """Install the agent service and the per-minute expiry check.

    :param command: how to run ``tether`` (e.g. ``[sys.executable, "-m", "tether"]``).
    """
    base = " ".join(shlex.quote(part) for part in command)
    cfg = shlex.quote(str(config.path))
    if SYSTEMD_RUNNING.exists():
        files = tuple(
            _write(config.systemd_dir / name, text)
            for name, text in systemd_units(command, config.path).items()
        )
        for args in (
            ["daemon-reload"],
            ["enable", "--now", "tether-agent.service", EXPIRE_TIMER],
        ):
            result = subprocess.run(
                ["systemctl", *args], capture_output=True, text=True, timeout=60
            )
            if result.returncode != 0:
                raise NotReady(f"systemctl {' '.join(args)} failed: {result.stderr.strip()}")
        # Installed is not running: only an active timer closes access on time.
        active = subprocess.run(
            ["systemctl", "is-active", EXPIRE_TIMER], capture_output=True, text=True, timeout=60
        )
        if active.stdout.strip() != "active":
            raise NotReady(
                f"{EXPIRE_TIMER} was installed but is {active.stdout.strip() or 'not active'}: "
                f"see `systemctl status {EXPIRE_TIMER}`; until it runs, access closes on time "
                "only while the agent runs"
            )
        return InstallReport("systemd", files)
    if not config.cron_dir.is_dir() or cron_daemon() is None:
        raise NotReady(
            "neither systemd nor a cron daemon runs on this machine, so nothing would close "
            "access on time while the agent is down: install cron (apt-get install cron) "
            "and run this again"
        )
    # cron's finest step is a minute: a second line half a minute later keeps the worst
    # case (expiry just after a run) at 30 s plus the run, within the 60 s budget.
    expire = f"{base} access expire --config {cfg} >/dev/null 2>&1"
    line = f"* * * * * root {expire}\n* * * * * root sleep 30; {expire}\n"
    entry = _write(config.cron_dir / CRON_ENTRY, "# Tether: close support access on time.\n" + line)
    return InstallReport("cron", (entry,))


def cron_command(entry: Path) -> list[str]:
    """The command a cron entry written by :func:`install` runs (for tests and `check`)."""
    for line in entry.read_text().splitlines():
        if line and not line.startswith("#"):
            fields = line.split(None, 6)
            return shlex.split(fields[6].split(">/dev/null")[0])
    raise NotReady(f"{entry} holds no command")
