"""Build Tether's Debian package and wheel (run by ``scripts/package``; see its header).

The package holds a complete virtualenv under ``/opt/tether`` made with Debian's own
``/usr/bin/python3``: Tether's wheel plus exactly the runtime dependencies that
``requirements.lock`` pins, installed with their hashes. Nothing is fetched when the
package is installed. ``/usr/bin/tether`` points into it; the systemd units, the
maintainer scripts and the conffile come from ``packaging/debian/``, except the agent's
units, which are the very text ``tether agent install`` writes
(:func:`tether.agent.machine.service.systemd_units`).

Only the standard library and Tether itself are imported; the build runs in the
checkout's ``.venv`` (its ``build`` and ``pip`` make the wheel and fill the virtualenv).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

from tether.agent.machine.service import systemd_units

ROOT = Path(__file__).resolve().parent.parent
DEBIAN = Path(__file__).resolve().parent / "debian"
PACKAGE = "tether"
PREFIX = Path("/opt/tether")
#: The interpreter the virtualenv is made with: the distribution's, so that the package
#: depends on a Debian python3 package rather than on the build machine's own Python.
SYSTEM_PYTHON = Path("/usr/bin/python3")
AGENT_CONFIG = Path("/etc/tether/agent.toml")
UNIT_DIR = Path("lib/systemd/system")
#: Units shipped as files (the agent's are generated from the code that installs them).
STATIC_UNITS = ("tether-relay@.service", "tether-vendor.service")
MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(root: str = "tether") -> set[str]:
    """Names of the distributions Tether needs at run time (no extras), by the lock's pins.

    Read from the checkout's virtualenv, which ``scripts/setup`` fills from
    ``requirements.lock``: the lock itself does not say which entries only the ``test``
    extra needs.
    """
    seen: set[str] = set()
    todo = [(root, frozenset[str]())]
    while todo:
        name, extras = todo.pop()
        key = _normal(name)
        if key in seen and not extras:
            continue
        seen.add(key)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            marker: Marker | None = req.marker
            wanted = marker is None or any(
                marker.evaluate({"extra": extra}) for extra in (extras or {""})
            )
            if wanted and (_normal(req.name) not in seen or req.extras):
                todo.append((req.name, frozenset(req.extras)))
    seen.discard(_normal(root))
    return seen


def runtime_lock(lock: Path, names: set[str]) -> str:
    """The entries of ``lock`` (with their hashes) for ``names`` only; all must be there."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lock.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            current = blocks.setdefault(_normal(re.split(r"[=;\s\[]", line, maxsplit=1)[0]), [])
        if current is not None and line:
            current.append(line)
    missing = sorted(names - blocks.keys())
    if missing:
        raise SystemExit(f"package: requirements.lock lacks {', '.join(missing)}; run scripts/lock")
    return "".join("\n".join(blocks[name]) + "\n" for name in sorted(names))


def build_wheel(out: Path) -> Path:
    """``python -m build --wheel`` of the checkout, offline (the backend is in the lock)."""
    with tempfile.TemporaryDirectory(prefix="tether-wheel-") as tmp:
        made = subprocess.run(
            [
                sys.executable,
                "-m",
                "build",
                "--wheel",
                "--no-isolation",
                "--outdir",
                tmp,
                str(ROOT),
            ],
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            raise SystemExit(f"package: python -m build failed:\n{made.stdout}{made.stderr}")
        (wheel,) = Path(tmp).glob("*.whl")
        target = out / wheel.name
        shutil.copy2(wheel, target)
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    return target


def pip(venv: Path, *args: str) -> None:
    """Run the checkout's pip against the package's virtualenv (which has no pip of its own)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), *args],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"package: pip {' '.join(args[:2])} failed:\n{result.stderr}")


def make_venv(stage: Path, wheel: Path, lock_text: str) -> None:
    """The virtualenv at ``stage/opt/tether``, rewritten to run from ``/opt/tether``."""
    venv = stage / PREFIX.relative_to("/")
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(venv)], check=True)
    lock_file = stage.parent / "runtime.lock"
    lock_file.write_text(lock_text)
    common = ("install", "--quiet", "--no-compile", "--no-deps", "--disable-pip-version-check")
    pip(venv, *common, "--require-hashes", "-r", str(lock_file))
    pip(venv, *common, str(wheel))
    lock_file.unlink()
    # pip wrote the staging path into scripts and records; the package runs at PREFIX.
    for path in venv.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if str(venv).encode() in data:
                path.write_bytes(data.replace(str(venv).encode(), str(PREFIX).encode()))
    # Wheels ship their extension modules with symbols: strip them as dh_strip would.
    objects = [str(p) for p in venv.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    if objects:
        subprocess.run(
            ["strip", "--strip-unneeded", "--remove-section=.comment", *objects], check=True
        )
    for name in ("Activate.ps1", "activate.csh", "activate.fish"):
        (venv / "bin" / name).unlink(missing_ok=True)
    # Bytecode made here by the python3 the package depends on (its minor version is
    # pinned in Depends), naming PREFIX: start-up without compiling (the agent must be
    # up within 2 s) and no file left behind that dpkg does not know.
    compile_all = [str(SYSTEM_PYTHON), "-m", "compileall", "-q", "-j", "0"]
    subprocess.run([*compile_all, "-d", str(PREFIX / "lib"), str(venv / "lib")], check=True)
    # direct_url.json names the wheel's path on the build machine: meaningless once installed.
    for record in venv.glob("lib/python3*/site-packages/tether-*.dist-info/direct_url.json"):
        record.unlink()
        rec = record.with_name("RECORD")
        rec.write_text(
            "".join(
                line for line in rec.read_text().splitlines(True) if "direct_url.json" not in line
            )
        )


def glibc_floor(stage: Path) -> str:
    """The newest glibc any wheel in the virtualenv was built for (its manylinux tag)."""
    floor = (2, 17)  # manylinux2014, the oldest tag pip picks on Debian 12
    for wheel in stage.rglob("*.dist-info/WHEEL"):
        for found in re.findall(r"manylinux_(\d+)_(\d+)", wheel.read_text()):
            floor = max(floor, (int(found[0]), int(found[1])))
    return f"{floor[0]}.{floor[1]}"


def python_minor() -> str:
    out = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _dpkg(*args: str) -> str:
    return subprocess.run(
        ["dpkg", *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def write_control(stage: Path, version: str) -> None:
    minor = python_minor()
    major, minor_number = minor.split(".")
    size_kib = sum(p.lstat().st_size for p in stage.rglob("*") if not p.is_dir()) // 1024
    control = DEBIAN.joinpath("control.in").read_text()
    control = control.format(
        version=version,
        arch=_dpkg("--print-architecture"),
        size=size_kib,
        python=minor,
        python_next=f"{major}.{int(minor_number) + 1}",
        glibc=glibc_floor(stage),
    )
    meta = stage / "DEBIAN"
    meta.mkdir(mode=0o755)
    (meta / "control").write_text(control)
    (meta / "conffiles").write_text("/etc/tether/tether.env\n")
    for name in MAINTAINER_SCRIPTS:
        target = meta / name
        shutil.copyfile(DEBIAN / name, target)
        target.chmod(0o755)
    sums = []
    for path in sorted(stage.rglob("*")):
        if path.is_file() and not path.is_symlink() and meta not in path.parents:
            digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
            sums.append(f"{digest}  {path.relative_to(stage)}\n")
    (meta / "md5sums").write_text("".join(sums))


def _gzip(source_text: str, target: Path) -> None:
    # mtime=0 and no name: the same changelog gives the same bytes (lintian checks -n).
    with (
        target.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz,
    ):
        gz.write(source_text.encode())


def fill_tree(stage: Path, version: str, wheel: Path, lock_text: str) -> None:
    make_venv(stage, wheel, lock_text)
    usr_bin = stage / "usr" / "bin"
    usr_bin.mkdir(parents=True)
    (usr_bin / "tether").symlink_to(PREFIX / "bin" / "tether")
    units = stage / UNIT_DIR
    units.mkdir(parents=True)
    for name, text in systemd_units(["/usr/bin/tether"], AGENT_CONFIG).items():
        (units / name).write_text(text)
    for name in STATIC_UNITS:
        shutil.copyfile(DEBIAN / name, units / name)
    etc = stage / "etc" / "tether"
    etc.mkdir(parents=True)
    shutil.copyfile(DEBIAN / "tether.env", etc / "tether.env")
    doc = stage / "usr" / "share" / "doc" / PACKAGE
    doc.mkdir(parents=True)
    shutil.copyfile(DEBIAN / "copyright", doc / "copyright")
    changelog = DEBIAN.joinpath("changelog.in").read_text().format(version=version)
    _gzip(changelog, doc / "changelog.Debian.gz")
    overrides = stage / "usr" / "share" / "lintian" / "overrides"
    overrides.mkdir(parents=True)
    shutil.copyfile(DEBIAN / "lintian-overrides", overrides / PACKAGE)
    for path in stage.rglob("*"):
        if path.is_symlink():
            continue
        if path.is_dir() or path.stat().st_mode & 0o111:
            path.chmod(0o755)
        else:
            path.chmod(0o644)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/package", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where to write (dist/)")
    parser.add_argument(
        "--revision",
        default=os.environ.get("TETHER_PKG_REVISION", "1"),
        help="Debian revision after the version from pyproject.toml (env TETHER_PKG_REVISION; "
        "default 1). A rebuild that must upgrade installed machines takes a higher one.",
    )
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[0-9][A-Za-z0-9.+~]*", args.revision):
        parser.error(f"--revision {args.revision!r}: use digits, letters, '.', '+' or '~'")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    version = f"{project['version']}-{args.revision}"
    args.out.mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(args.out)
    lock_text = runtime_lock(ROOT / "requirements.lock", runtime_closure())
    with tempfile.TemporaryDirectory(prefix="tether-deb-") as tmp:
        stage = Path(tmp) / "root"
        stage.mkdir()
        fill_tree(stage, version, wheel, lock_text)
        write_control(stage, version)
        deb = args.out / f"{PACKAGE}_{version}_{_dpkg('--print-architecture')}.deb"
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "-z6", "--build", str(stage), str(deb)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    print(wheel)
    print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
