"""The agent↔relay control protocol: JSON lines, decoded strictly."""

from __future__ import annotations

import json

import pytest

from tether.protocol import (
    MAX_LINE,
    MAX_SEQ,
    PERMANENT_REASONS,
    AccessClosed,
    ChainHead,
    Closing,
    GrantLimits,
    HeadAnswer,
    HeadQuery,
    LineBuffer,
    Message,
    PasswordWithdrawn,
    ProtocolError,
    RefusalReason,
    Refused,
    Register,
    Registered,
    Request,
    decode,
    encode,
)

MESSAGES: list[Message] = [
    Register("v4.public.abc.def", 1),
    Registered("SN-1001", "2030-06-15T12:00:00Z", (22, 80, 443)),
    Registered("SN-1001", "2030-06-15T12:00:00Z", ()),
    Registered("SN-1001", "2030-06-15T12:00:00Z", (22,), audit_heads=True),
    Registered("SN-1001", "2030-06-15T12:00:00Z", (22,), audit_heads=True, grant_limits=True),
    GrantLimits("k1", ()),
    Request("SN-1001", "disk full", 1, ("no administrator rights (sudo)",)),
    GrantLimits("k1", ("no administrator rights (sudo)", "file transfer: download only")),
    *(Refused(reason, f"refused: {reason.value} — ünïcode") for reason in RefusalReason),
    *(Closing(reason, "closing\nwith a line break") for reason in RefusalReason),
    Closing(RefusalReason.SHUTDOWN, "come back within 33 s", 33.3),
    ChainHead(0, "0" * 64),
    ChainHead(MAX_SEQ, "ab" * 32),
    HeadQuery(1),
    HeadAnswer(7, "cd" * 32),
    HeadAnswer(7, None),
    AccessClosed("k-1", "customer"),
    PasswordWithdrawn("k-1"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=repr)
def test_every_message_survives_encode_and_decode(message: Message) -> None:
    line = encode(message)

    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1  # one message, one line, whatever the text holds
    assert decode(line) == message
    assert decode(line.rstrip(b"\n")) == message


def test_wire_format_is_plain_json_with_an_op() -> None:
    assert json.loads(encode(Register("K", 1))) == {"op": "register", "key": "K", "version": 1}
    assert json.loads(encode(Refused(RefusalReason.REVOKED, "gone"))) == {
        "op": "refused",
        "reason": "revoked",
        "message": "gone",
    }
    assert json.loads(encode(Registered("S", "T", (22,)))) == {
        "op": "registered",
        "serial": "S",
        "expires_at": "T",
        "ports": [22],
    }


def test_audit_heads_is_said_only_by_a_relay_that_checks_them() -> None:
    older = b'{"op":"registered","serial":"S","expires_at":"T","ports":[22]}'
    odd = b'{"op":"registered","serial":"S","expires_at":"T","ports":[22],"audit_heads":"yes"}'

    assert decode(older) == Registered("S", "T", (22,), audit_heads=False)
    assert decode(odd) == Registered("S", "T", (22,), audit_heads=False)
    assert json.loads(encode(Registered("S", "T", (22,), audit_heads=True)))["audit_heads"] is True


def test_a_message_from_a_newer_relay_with_extra_fields_is_read() -> None:
    line = b'{"op":"closing","reason":"shutdown","message":"bye","retry_in":5}'

    assert decode(line) == Closing(RefusalReason.SHUTDOWN, "bye")


@pytest.mark.parametrize("spread", ["-1", "3601", "NaN", "Infinity", '"5"', "true", "null"])
def test_a_reconnect_spread_out_of_range_is_a_protocol_error(spread: str) -> None:
    line = (
        b'{"op":"closing","reason":"shutdown","message":"bye","retry_within":%s}' % spread.encode()
    )

    with pytest.raises(ProtocolError, match="retry_within"):
        decode(line)


def test_permanent_reasons_are_those_a_retry_cannot_fix() -> None:
    assert RefusalReason.REVOKED in PERMANENT_REASONS
    assert RefusalReason.OTHER_MACHINE in PERMANENT_REASONS
    assert RefusalReason.EXPIRED in PERMANENT_REASONS
    for passing in (
        RefusalReason.SHUTDOWN,
        RefusalReason.REPLACED,
        RefusalReason.INTERNAL,
        RefusalReason.UNAVAILABLE,
    ):
        assert passing not in PERMANENT_REASONS
    # A clock that is behind may catch up: not-yet-valid is worth a retry.
    assert RefusalReason.NOT_YET_VALID not in PERMANENT_REASONS


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"hello",
        b"\xff\xfe\x00",
        b"[]",
        b'"register"',
        b"42",
        b"null",
        b"{}",
        b'{"op":"register"}',
        b'{"op":"register","key":"K"}',
        b'{"op":"register","key":5,"version":1}',
        b'{"op":"register","key":"K","version":"1"}',
        b'{"op":"register","key":null,"version":1}',
        b'{"op":"registered","serial":"S","expires_at":"T"}',
        b'{"op":"registered","serial":"S","expires_at":"T","ports":["ssh"]}',
        b'{"op":"registered","serial":"S","expires_at":"T","ports":22}',
        b'{"op":"registered","serial":"S","expires_at":"T","ports":null}',
        b'{"op":"refused","reason":"because","message":"m"}',
        b'{"op":"refused","reason":"revoked"}',
        b'{"op":"closing","message":"m"}',
        b'{"op":"closing","reason":["revoked"],"message":"m"}',
        b'{"op":"audit-head","seq":-1,"hash":"' + b"a" * 64 + b'"}',
        b'{"op":"audit-head","seq":9223372036854775808,"hash":"' + b"a" * 64 + b'"}',
        b'{"op":"audit-head","seq":1,"hash":"' + b"A" * 64 + b'"}',
        b'{"op":"audit-head","seq":1,"hash":null}',
        b'{"op":"audit-head","seq":1.5,"hash":"' + b"a" * 64 + b'"}',
        b'{"op":"audit-head","seq":1}',
        b'{"op":"audit-query","seq":0}',
        b'{"op":"audit-entry","seq":3,"hash":"short"}',
        b'{"op":"audit-entry","seq":3}',
    ],
)
def test_garbage_and_wrong_types_are_protocol_errors(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="bad control message"):
        decode(line)


@pytest.mark.parametrize("op", ['"hello"', '"REGISTER"', "5", "null", '["register"]'])
def test_an_unknown_operation_is_a_protocol_error_naming_it(op: str) -> None:
    with pytest.raises(ProtocolError, match="unknown control operation"):
        decode(f'{{"op":{op},"key":"K","version":1}}'.encode())


@pytest.mark.parametrize(
    "line",
    [
        b'{"op":"registered","serial":"S","expires_at":"T","ports":"443"}',
        b'{"op":"registered","serial":null,"expires_at":"T","ports":[22]}',
        b'{"op":"registered","serial":"S","expires_at":"T","ports":[true, 22.9]}',
        b'{"op":"refused","reason":"revoked","message":null}',
    ],
)
def test_wrongly_typed_fields_are_not_coerced(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(line)


def test_deeply_nested_json_is_a_protocol_error() -> None:
    line = b"[" * 5000 + b"]" * 5000
    assert len(line) <= MAX_LINE

    with pytest.raises(ProtocolError):
        decode(line)


def test_a_line_over_max_line_is_refused_before_parsing() -> None:
    key = "k" * MAX_LINE
    line = encode(Register(key, 1))

    with pytest.raises(ProtocolError, match="too long"):
        decode(line)


def test_a_line_of_exactly_max_line_is_read() -> None:
    overhead = len(encode(Register("", 1)).rstrip(b"\n"))
    line = encode(Register("k" * (MAX_LINE - overhead), 1)).rstrip(b"\n")
    assert len(line) == MAX_LINE

    assert decode(line) == Register("k" * (MAX_LINE - overhead), 1)


# --- line buffer --------------------------------------------------------------------


def test_line_buffer_joins_a_line_split_across_chunks() -> None:
    buffer = LineBuffer()
    line = encode(Register("v4.public.key", 1))

    assert buffer.feed(line[:5]) == []
    assert buffer.feed(line[5:20]) == []
    assert buffer.feed(line[20:]) == [line.rstrip(b"\n")]


def test_line_buffer_splits_several_lines_in_one_chunk_and_keeps_the_rest() -> None:
    buffer = LineBuffer()
    a = encode(Refused(RefusalReason.REVOKED, "a"))
    b = encode(Closing(RefusalReason.SHUTDOWN, "b"))
    c = encode(Registered("S", "T", (22,)))

    lines = buffer.feed(a + b + c[:10])

    assert [decode(x) for x in lines] == [decode(a), decode(b)]
    assert [decode(x) for x in buffer.feed(c[10:])] == [decode(c)]


def test_line_buffer_one_byte_at_a_time() -> None:
    buffer = LineBuffer()
    data = encode(Register("K", 1)) + encode(Closing(RefusalReason.EXPIRED, "x"))

    out = [line for byte in data for line in buffer.feed(bytes([byte]))]

    assert [decode(x) for x in out] == [Register("K", 1), Closing(RefusalReason.EXPIRED, "x")]


def test_line_buffer_skips_blank_lines() -> None:
    buffer = LineBuffer()

    assert buffer.feed(b"\n\r\n  \n" + encode(Register("K", 1))) == [
        encode(Register("K", 1)).rstrip(b"\n")
    ]


def test_line_buffer_refuses_an_endless_line() -> None:
    buffer = LineBuffer()
    chunk = b"x" * 4096
    fed = 0
    with pytest.raises(ProtocolError, match="too long"):  # noqa: PT012
        while fed <= 10 * MAX_LINE:
            buffer.feed(chunk)
            fed += len(chunk)
    assert fed <= MAX_LINE  # refused as soon as the limit is passed, not later


def test_line_buffer_accepts_a_partial_line_up_to_the_limit() -> None:
    buffer = LineBuffer()

    assert buffer.feed(b"x" * MAX_LINE) == []
    with pytest.raises(ProtocolError):
        buffer.feed(b"x")


@pytest.mark.parametrize(
    "limits",
    [
        '"no sudo"',
        "[1]",
        '[""]',
        '["line\\nbreak"]',
        '["' + "x" * 301 + '"]',
        "[" + ",".join(['"a"'] * 11) + "]",
    ],
)
def test_grant_limits_are_a_short_list_of_short_printable_lines(limits: str) -> None:
    line = f'{{"op":"grant-limits","key_id":"k1","limits":{limits}}}'.encode()
    with pytest.raises(ProtocolError):
        decode(line)
