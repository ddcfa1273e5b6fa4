"""Shared state of the vendor service and the relays (SQLite or PostgreSQL).

Open a :class:`Store` with a database URL (:func:`sqlite_url` for a file); it
migrates the schema to the newest revision and offers one repository per
table. Repositories return frozen records (:class:`IssuedKey`,
:class:`Engineer`, :class:`TetherRecord`, :class:`Revocation`,
:class:`RelayRecord`, :class:`MachineRecord`, :class:`CaseRecord`,
:class:`ChannelRecord`, :class:`TokenRecord` …) with timezone-aware UTC datetimes.
"""

from tether.store.auditchain import (
    AuditHead,
    AuditRepo,
    ChainReport,
    PendingEvent,
    relay_chain,
)
from tether.store.cases import MAX_CASE_ID, MAX_DESCRIPTION, CaseRepo, MachineRepo
from tether.store.db import StoreConflict, StoreError
from tether.store.engine import Store
from tether.store.migrate import head_revision
from tether.store.models import CaseStatus, KeyKind, RevocationKind
from tether.store.records import (
    CaseRecord,
    ChannelRecord,
    Engineer,
    EngineerCredentials,
    IssuedKey,
    MachineRecord,
    RelayRecord,
    Revocation,
    SealedPassword,
    TetherRecord,
    TokenRecord,
)
from tether.store.registry import ChannelRepo, PasswordRepo, TetherRepo
from tether.store.relays import RelayRepo
from tether.store.repos import (
    ENGINEER_NAME_RULE,
    REVOCATION_CHANNEL,
    EngineerRepo,
    KeyRepo,
    RevocationRepo,
    validate_engineer_name,
)
from tether.store.sessions import TokenRepo
from tether.store.urls import ACCEPTED_URLS, display_url, normalize_url, sqlite_url

__all__ = [
    "ACCEPTED_URLS",
    "ENGINEER_NAME_RULE",
    "MAX_CASE_ID",
    "MAX_DESCRIPTION",
    "REVOCATION_CHANNEL",
    "AuditHead",
    "AuditRepo",
    "CaseRecord",
    "CaseRepo",
    "CaseStatus",
    "ChainReport",
    "ChannelRecord",
    "ChannelRepo",
    "Engineer",
    "EngineerCredentials",
    "EngineerRepo",
    "IssuedKey",
    "KeyKind",
    "KeyRepo",
    "MachineRecord",
    "MachineRepo",
    "PasswordRepo",
    "PendingEvent",
    "RelayRecord",
    "RelayRepo",
    "Revocation",
    "RevocationKind",
    "RevocationRepo",
    "SealedPassword",
    "Store",
    "StoreConflict",
    "StoreError",
    "TetherRecord",
    "TetherRepo",
    "TokenRecord",
    "TokenRepo",
    "display_url",
    "head_revision",
    "normalize_url",
    "relay_chain",
    "sqlite_url",
    "validate_engineer_name",
]
