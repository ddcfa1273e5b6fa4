"""Engineer credentials, API sessions and engineers' live channels (both backends)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest

from tether.errors import BadInput
from tether.store import Store

from .helpers import T0

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzb21lc2FsdA$" + "A" * 43
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def test_new_engineer_has_no_credentials_and_is_not_admin(store: Store) -> None:
    added = await store.engineers.add("alice", T0)
    assert (added.admin, added.has_password, added.totp_enabled) == (False, False, False)
    creds = await store.engineers.credentials("alice")
    assert creds is not None
    assert (creds.password_hash, creds.totp_secret, creds.active, creds.admin) == (
        None,
        None,
        True,
        False,
    )
    assert await store.engineers.credentials("bob") is None


async def test_add_admin_with_password_and_set_credentials(store: Store) -> None:
    added = await store.engineers.add("root-ish", T0, admin=True, password_hash=HASH)
    assert added.admin
    assert added.has_password
    assert await store.engineers.get("root-ish") == added
    creds = await store.engineers.credentials("root-ish")
    assert creds is not None
    assert creds.password_hash == HASH
    assert HASH not in repr(creds)

    await store.engineers.add("bob", T0)
    after = await store.engineers.set_password("bob", HASH)
    assert after.has_password
    with_totp = await store.engineers.set_totp("bob", SECRET)
    assert with_totp.totp_enabled
    creds = await store.engineers.credentials("bob")
    assert creds is not None
    assert creds.totp_secret == SECRET
    assert SECRET not in repr(creds)
    assert SECRET not in repr(with_totp)
    assert not (await store.engineers.set_totp("bob", None)).totp_enabled
    assert (await store.engineers.set_admin("bob", True)).admin
    assert not (await store.engineers.set_admin("bob", False)).admin


async def test_credentials_refuse_plain_passwords_and_bad_secrets(store: Store) -> None:
    await store.engineers.add("alice", T0)
    with pytest.raises(BadInput, match="argon2 PHC string"):
        await store.engineers.set_password("alice", "hunter2hunter2")
    with pytest.raises(BadInput, match="argon2 PHC string"):
        await store.engineers.add("bob", T0, password_hash="hunter2hunter2")
    with pytest.raises(BadInput, match="base32"):
        await store.engineers.set_totp("alice", "not a secret")
    for call in (
        store.engineers.set_password("ghost", HASH),
        store.engineers.set_totp("ghost", None),
        store.engineers.set_admin("ghost", True),
    ):
        with pytest.raises(BadInput, match="no engineer named 'ghost'"):
            await call


async def test_tokens_create_get_delete_purge(store: Store) -> None:
    await store.engineers.add("alice", T0)
    one, two = token_hash("one"), token_hash("two")
    made = await store.tokens.create("alice", one, T0, T0 + timedelta(hours=12))
    await store.tokens.create("alice", two, T0, T0 + timedelta(hours=1))
    assert await store.tokens.get(one) == made
    assert made.engineer == "alice"
    assert not made.expired(T0 + timedelta(hours=11))
    assert made.expired(T0 + timedelta(hours=12))
    assert await store.tokens.get("not-a-hash") is None
    assert await store.tokens.purge_expired(T0 + timedelta(hours=2)) == 1
    assert await store.tokens.get(two) is None
    await store.tokens.delete(one)
    assert await store.tokens.get(one) is None
    with pytest.raises(BadInput, match="no such engineer"):
        await store.tokens.create("ghost", one, T0, T0 + timedelta(hours=1))
    with pytest.raises(BadInput, match="never the token"):
        await store.tokens.create("alice", "plain-token", T0, T0 + timedelta(hours=1))


async def test_removing_or_disabling_an_engineer_ends_their_sessions(store: Store) -> None:
    await store.engineers.add("alice", T0)
    await store.engineers.add("bob", T0)
    await store.tokens.create("alice", token_hash("a"), T0, T0 + timedelta(hours=1))
    await store.tokens.create("bob", token_hash("b"), T0, T0 + timedelta(hours=1))
    await store.engineers.remove("alice", now=T0)
    assert await store.tokens.get(token_hash("a")) is None  # ON DELETE CASCADE
    assert await store.tokens.delete_engineer("bob") == 1
    assert await store.tokens.get(token_hash("b")) is None


async def test_channels_open_list_close_clear(store: Store) -> None:
    a = await store.channels.open(relay_id="r1", serial="SN-1", engineer="alice", port=22, now=T0)
    b = await store.channels.open(relay_id="r2", serial="SN-1", engineer="bob", port=443, now=T0)
    c = await store.channels.open(relay_id="r1", serial="SN-2", engineer="alice", port=22, now=T0)
    assert a < b < c
    listed = await store.channels.list()
    assert [(ch.id, ch.engineer, ch.port) for ch in listed] == [
        (a, "alice", 22),
        (b, "bob", 443),
        (c, "alice", 22),
    ]
    assert listed[0].opened_at == T0
    assert [ch.id for ch in await store.channels.list("SN-1")] == [a, b]
    await store.channels.close(b)
    await store.channels.close(b)  # twice is harmless
    assert [ch.id for ch in await store.channels.list("SN-1")] == [a]
    assert await store.channels.clear_relay("r1") == 2
    assert await store.channels.list() == []
    with pytest.raises(BadInput, match="port must be 1-65535"):
        await store.channels.open(relay_id="r1", serial="SN-1", engineer="a", port=0, now=T0)


async def test_get_many_keys(store: Store) -> None:
    from .helpers import issue

    await issue(store, "k1")
    await issue(store, "k2")
    got = await store.keys.get_many(["k1", "k2", "nope", "k1"])
    assert sorted(got) == ["k1", "k2"]
    assert await store.keys.get_many([]) == {}
