"""The vendor's authority: its data directory, tether keys, engineer certificates.

``tether vendor init`` creates a data directory holding every secret the vendor has:
the tether-key signing key, the engineers' SSH user CA, the relay host key — and the
shared database, plus ready-to-use ``vendor.toml`` and ``relay.toml`` and the trust
snippet that goes into customers' agent configuration. It refuses to overwrite
anything. :class:`Authority` then issues and revokes keys, signs certificates and
decides one-click cases, recording what it issued in the store so relays can check
it, and every such act in the vendor's own hash-chained audit log: the ``vendor`` chain
of the shared database (:class:`~tether.store.AuditRepo`), next to the relays' chains.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from tether import log
from tether.audit import AuditEntry, FieldValue, check_no_secrets
from tether.certs import EngineerCertificate, sign_engineer_certificate
from tether.clock import SYSTEM_CLOCK, Clock
from tether.config import VendorConfig, toml_string
from tether.errors import BadInput, NotReady, Refused
from tether.keys import (
    KeyKind,
    SigningKey,
    TetherKeyClaims,
    check_ports,
    check_serial,
    issue_key,
    parse_address,
)
from tether.seal import SealPrivateKey
from tether.sshlib import asyncssh
from tether.store import (
    CaseRecord,
    CaseStatus,
    ChainReport,
    IssuedKey,
    MachineRecord,
    Store,
    StoreError,
    sqlite_url,
)
from tether.store import KeyKind as StoreKeyKind

logger = logging.getLogger("tether.vendor_service")

DEFAULT_KEY_LIFETIME = timedelta(days=14)
#: The vendor's own audit chain in the shared database.
VENDOR_CHAIN = "vendor"
#: Who decides cases under ``request_policy = "auto"``.
AUTO_APPROVER = "auto-approve"
#: What replaces a free-text audit field that looked like a secret.
WITHHELD = "[withheld: looked like a key]"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_public(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def case_machine(case_machine_key: str, bound: MachineRecord | None) -> str:
    """Whether approving a case serves the machine its serial is bound to ("known"),
    binds the serial to a machine for the first time ("new"), or would hand a key to a
    different machine than the bound one ("other": re-bind a replaced machine first)."""
    owner = bound.machine_key if bound is not None else None
    return "new" if owner is None else "known" if owner == case_machine_key else "other"


@dataclass(frozen=True)
class InitResult:
    """What ``tether vendor init`` created: the config and what to hand to others."""

    config: VendorConfig
    vendor_public_key: str
    engineer_ca: str
    relay_host_key_fingerprint: str
    agent_trust_file: Path
    relay_config: Path


async def init_data_dir(
    data_dir: Path,
    *,
    vendor: str,
    relay: str,
    database: str | None = None,
    relay_listen: str | None = None,
) -> InitResult:
    """Create a vendor data directory; refuse if any of its files already exist."""
    result = _create_files(data_dir, vendor, relay, database, relay_listen)
    store = await Store.open(result.config.database)
    await store.aclose()
    log.event(logger, "vendor.init", data_dir=str(result.config.data_dir), vendor=vendor)
    return result


def _create_files(
    data_dir: Path, vendor: str, relay: str, database: str | None, relay_listen: str | None
) -> InitResult:
    host, port = parse_address(relay, what="relay address")
    listen = relay_listen or f"0.0.0.0:{port}"
    parse_address(listen, what="relay listen address", any_port=True)
    if not vendor.strip() or len(vendor) > 64 or not vendor.isprintable():
        raise BadInput("the vendor name must be 1-64 printable characters")
    data_dir = data_dir.resolve()
    names = [
        "vendor.toml",
        "relay.toml",
        "agent-trust.toml",
        "tether_signing_key.pem",
        "password_seal_key.pem",
        "engineer_ca",
        "engineer_ca.pub",
        "relay_host_key",
        "relay_host_key.pub",
        "tether.db",
    ]
    existing = [n for n in names if (data_dir / n).exists()]
    if existing:
        raise Refused(
            f"{data_dir} already holds a vendor setup ({', '.join(existing)}); "
            "refusing to overwrite it — choose another --data-dir"
        )
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    database = database or sqlite_url(data_dir / "tether.db")

    signing = SigningKey.generate()
    ca = asyncssh.generate_private_key("ssh-ed25519", comment=f"{vendor} engineer CA")
    host_key = asyncssh.generate_private_key("ssh-ed25519", comment=f"{vendor} relay")
    _write_private(data_dir / "tether_signing_key.pem", signing.to_pem())
    seal_key = SealPrivateKey.generate()
    _write_private(data_dir / "password_seal_key.pem", seal_key.to_pem())
    _write_private(data_dir / "engineer_ca", ca.export_private_key())
    _write_public(data_dir / "engineer_ca.pub", ca.export_public_key())
    _write_private(data_dir / "relay_host_key", host_key.export_private_key())
    _write_public(data_dir / "relay_host_key.pub", host_key.export_public_key())

    public = signing.verify_key().to_paserk()
    ca_line = ca.export_public_key().decode().strip()
    _write_public(
        data_dir / "vendor.toml",
        (
            f"# Tether vendor service ({vendor}); paths are relative to this file.\n"
            f"vendor = {toml_string(vendor)}\n"
            f'data_dir = "."\n'
            f"database = {toml_string(database)}\n"
            f"relay = {toml_string(relay)}\n"
            '# One-click requests: "hold" (default) waits for an engineer to approve;\n'
            '# "auto" issues a key at once to a machine already bound to its serial (by an\n'
            "# earlier key); a request for an unbound serial still waits for an engineer.\n"
            '# request_policy = "hold"\n'
            '# request_key_lifetime = "21d"\n'
        ).encode(),
    )
    _write_public(
        data_dir / "relay.toml",
        (
            "# Tether relay; paths are relative to this file.\n"
            f"listen = {toml_string(listen)}\n"
            f"advertise = {toml_string(f'{host}:{port}')}\n"
            'host_key = "relay_host_key"\n'
            'engineer_ca = "engineer_ca.pub"\n'
            f"database = {toml_string(database)}\n"
            f"vendor_keys = [{toml_string(public)}]\n"
        ).encode(),
    )
    _write_public(
        data_dir / "agent-trust.toml",
        (
            f"# Paste into /etc/tether/agent.toml on customers' machines: {vendor}'s public keys.\n"
            f"vendor_keys = [{toml_string(public)}]\n"
            f"vendor_ca = {toml_string(ca_line)}\n"
            f"vendor_seal_key = {toml_string(seal_key.public().text())}\n"
            f"request_relay = {toml_string(f'{host}:{port}')}\n"
            f"request_relay_host_key = {toml_string(host_key.get_fingerprint('sha256'))}\n"
        ).encode(),
    )
    config = VendorConfig.load(data_dir / "vendor.toml")
    return InitResult(
        config=config,
        vendor_public_key=public,
        engineer_ca=ca_line,
        relay_host_key_fingerprint=host_key.get_fingerprint("sha256"),
        agent_trust_file=data_dir / "agent-trust.toml",
        relay_config=data_dir / "relay.toml",
    )


def load_vendor_config(data_dir: Path) -> VendorConfig:
    """Read ``vendor.toml`` of ``data_dir``; :class:`NotReady` if there is no vendor setup."""
    path = data_dir / "vendor.toml"
    if not path.exists():
        raise NotReady(
            f"no vendor setup in {data_dir}: run `tether vendor init --data-dir {data_dir}` first"
        )
    return VendorConfig.load(path)


class Authority:
    """Issues and revokes tether keys and signs engineer certificates.

    :param config: the vendor configuration (its data directory holds the keys).
    :param store: the shared database the relays read.
    """

    def __init__(self, config: VendorConfig, store: Store, *, clock: Clock = SYSTEM_CLOCK) -> None:
        """Load the vendor keys from ``config.data_dir``; :class:`NotReady` if they are missing."""
        self.config = config
        self.store = store
        self.clock = clock
        try:
            self.signing_key = SigningKey.from_pem(config.signing_key_path.read_bytes())
            self.ca_key = asyncssh.read_private_key(config.engineer_ca_path)
            relay_key = asyncssh.read_public_key(str(config.relay_host_key_path) + ".pub")
        except OSError as exc:
            raise NotReady(
                f"cannot read the vendor keys in {config.data_dir}: {exc.strerror}"
            ) from None
        self.relay_host_key_fingerprint = relay_key.get_fingerprint("sha256")

    async def record(
        self, event: str, /, *, required: bool = False, **fields: FieldValue
    ) -> AuditEntry | None:
        """Append ``event`` to the vendor's audit chain (``vendor``) in the shared database.

        Free-text values that look like a key are replaced by :data:`WITHHELD`. With
        ``required`` a failure to write raises :class:`NotReady` (the caller must not go
        on, e.g. reveal a password unaudited); otherwise it is logged and ``None``
        returned, because the act it records has already happened.
        """
        safe: dict[str, FieldValue] = {}
        for name, value in fields.items():
            try:
                check_no_secrets({name: value})
            except ValueError:
                value = WITHHELD
            safe[name] = value
        try:
            return await self.store.audit.append(VENDOR_CHAIN, event, now=self.clock.now(), **safe)
        except (StoreError, ValueError) as exc:
            log.event(
                logger,
                "audit.failed",
                level=logging.ERROR,
                audit_event=event,
                chain=VENDOR_CHAIN,
                error=str(exc),
            )
            if required:
                raise NotReady(f"cannot write the vendor audit log: {exc}") from None
            return None

    async def audit_report(self, chain: str = VENDOR_CHAIN) -> ChainReport:
        """Read an audit chain of the shared database and verify it.

        :param chain: ``vendor`` (this service's acts) or ``relay:<relay id>`` (a relay's
            tethers and engineer channels); :meth:`~tether.store.AuditRepo.chains` lists them.
        :returns: the readable entries in write order and the chain's
            :class:`~tether.audit.Verification` (problems name the edited, removed or
            reordered entry).
        :raises ValueError: ``chain`` is not a valid chain name.
        :raises StoreError: the database cannot be read.
        """
        return await self.store.audit.read(chain)

    async def issue_key(
        self,
        serial: str,
        *,
        lifetime: timedelta = DEFAULT_KEY_LIFETIME,
        ports: tuple[int, ...] | None = None,
        relay: str | None = None,
        issued_by: str = "vendor-cli",
        kind: KeyKind = KeyKind.MANUAL,
        description: str | None = None,
    ) -> tuple[str, TetherKeyClaims]:
        """Sign a key for ``serial`` and record it; return the key text and its claims."""
        token, claims = issue_key(
            self.signing_key,
            serial=serial,
            now=self.clock.now(),
            lifetime=lifetime,
            relay=relay or self.config.relay,
            relay_host_key=self.relay_host_key_fingerprint,
            ports=check_ports(ports or self.config.default_ports),
            vendor=self.config.vendor,
            kind=kind,
        )
        await self.store.keys.record_issued(
            key_id=claims.key_id,
            serial=claims.serial,
            kind=StoreKeyKind(kind.value),
            issued_at=claims.issued_at,
            not_before=claims.not_before,
            expires_at=claims.expires_at,
            ports=claims.ports,
            relay=claims.relay,
            relay_host_key=claims.relay_host_key,
            issued_by=issued_by,
            description=description,
        )
        log.event(
            logger,
            "key.issued",
            key=claims.key_id,
            serial=claims.serial,
            expires=claims.expires_at,
            by=issued_by,
        )
        await self.record(
            "key.issued",
            key_id=claims.key_id,
            serial=claims.serial,
            kind=kind.value,
            expires_at=claims.expires_at.isoformat(),
            by=issued_by,
        )
        return token, claims

    async def revoke_key(self, key_id: str, *, reason: str, by: str = "vendor-cli") -> IssuedKey:
        """Revoke a key: every relay drops its tether within a second."""
        issued = await self.store.keys.revoke(key_id, reason=reason, now=self.clock.now())
        log.event(logger, "key.revoked", key=key_id, serial=issued.serial, by=by, reason=reason)
        await self.record("key.revoked", key_id=key_id, serial=issued.serial, by=by, reason=reason)
        return issued

    async def approve_case(self, case_id: int, *, by: str) -> CaseRecord:
        """Issue a ``request`` key for a pending case and hand it to the waiting machine.

        The key is valid for ``request_key_lifetime`` and carries the case's description.
        A request never binds its serial by itself, so who decides matters:

        * a person (``by`` an engineer's name) approves the case for the machine key it
          names, having seen its fingerprint: an unbound serial is bound to that machine
          key here, so the key works on that machine only;
        * the auto-approver (:data:`AUTO_APPROVER`) serves only a serial already bound to
          the requesting machine key (by an earlier key's first use or approval); any
          other case is left to a person (:class:`Refused`, the case stays pending).

        A serial bound to another machine key: :class:`Refused` (an admin re-binds a
        replaced machine first). Unknown case: :class:`BadInput`; already decided:
        :class:`Refused`. If another decider wins the race after the key was signed, the
        key is revoked again.
        """
        case = await self.store.cases.get(case_id)
        if case is None:
            raise BadInput(f"no case {case_id}")
        if case.status is not CaseStatus.PENDING:
            raise Refused(f"case {case_id} is already {case.status.value}; it can no longer change")
        bound = await self.store.machines.get(case.serial)
        owner = bound.machine_key if bound is not None else None
        if owner is not None and owner != case.machine_key:
            raise Refused(
                f"serial {case.serial} is bound to another machine ({owner}), but case "
                f"{case_id} came from {case.machine_key}: if the machine was replaced, re-bind "
                f"it first (`tether vendor machine rebind {case.serial}`), otherwise deny the case"
            )
        if by == AUTO_APPROVER and owner is None:
            raise Refused(
                f"serial {case.serial} is not bound to a machine yet: case {case_id} waits for "
                "an engineer, who approves it for the machine key it names"
            )
        token, claims = await self.issue_key(
            case.serial,
            lifetime=self.config.request_key_lifetime,
            kind=KeyKind.REQUEST,
            issued_by=by,
            description=case.description,
        )
        try:
            decided = await self.store.cases.approve_and_issue(
                case_id, by=by, key_id=claims.key_id, key_text=token, now=self.clock.now()
            )
        except Refused:
            await self.revoke_key(
                claims.key_id, reason=f"case {case_id} was decided by someone else", by=by
            )
            raise
        if owner is None:
            await self.store.machines.bind_first_use(
                case.serial, case.machine_key, self.clock.now()
            )
            log.event(logger, "machine.bound", serial=case.serial, machine=case.machine_key, by=by)
        log.event(logger, "case.approved", case=case_id, serial=case.serial, by=by)
        await self.record(
            "case.approved",
            case_id=case_id,
            serial=case.serial,
            key_id=claims.key_id,
            machine=case.machine_key,
            by=by,
        )
        return decided

    async def deny_case(self, case_id: int, *, by: str, reason: str) -> CaseRecord:
        """Deny a pending case (the machine is told ``reason``).

        Unknown case: :class:`BadInput`; already decided: :class:`Refused`.
        """
        decided = await self.store.cases.deny(case_id, by=by, reason=reason, now=self.clock.now())
        log.event(logger, "case.denied", case=case_id, serial=decided.serial, by=by)
        await self.record(
            "case.denied", case_id=case_id, serial=decided.serial, by=by, reason=reason
        )
        return decided

    async def rebind_machine(self, serial: str, *, by: str, reason: str) -> None:
        """Forget the machine key bound to ``serial``: the next approved case or key binds anew.

        Invalid or unknown serial: :class:`BadInput`.
        """
        serial = check_serial(serial)
        await self.store.machines.rebind(serial, by=by, now=self.clock.now())
        log.event(logger, "machine.rebound", serial=serial, by=by)
        await self.record("machine.rebound", serial=serial, by=by, reason=reason)

    async def sign(
        self, engineer: str, public_key: asyncssh.SSHKey, *, ttl: timedelta
    ) -> EngineerCertificate:
        """Sign an engineer's public key; the engineer must exist and be active."""
        record = await self.store.engineers.get(engineer)
        if record is None:
            raise Refused(
                f"no engineer {engineer!r}: add one with `tether vendor engineer add {engineer}`"
            )
        if not record.active:
            raise Refused(f"engineer {engineer!r} is disabled")
        cert = sign_engineer_certificate(
            self.ca_key,
            public_key,
            engineer=engineer,
            now=self.clock.now(),
            ttl=ttl,
            support_account=self.config.support_account,
        )
        log.event(
            logger,
            "cert.signed",
            engineer=engineer,
            serial=cert.serial,
            valid_before=cert.valid_before,
        )
        await self.record(
            "cert.signed",
            engineer=engineer,
            cert_serial=cert.serial,
            valid_after=cert.valid_after.isoformat(),
            valid_before=cert.valid_before.isoformat(),
        )
        return cert
