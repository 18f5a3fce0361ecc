"""Message codecs: round trips, and the decoder's one way of saying no."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiotq import MessageRejected
from aiotq.protocol import (
    BROKEN_ENVELOPE,
    CODECS,
    Message,
    ResultRecord,
    SignatureData,
    decode_message,
    decode_record,
)

ACCEPT = frozenset({"json", "msgpack"})
JSON = CODECS["json"].content_type
MSGPACK = CODECS["msgpack"].content_type

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)

messages = st.builds(
    Message,
    id=st.uuids().map(str),
    task=st.text(min_size=1, max_size=30),
    args=st.lists(json_values, max_size=4),
    kwargs=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    retries=st.integers(0, 100),
    eta_at_s=st.none() | st.floats(0, 2e9),
    priority=st.none() | st.integers(0, 9),
    link=st.lists(st.builds(SignatureData, task=st.text(min_size=1, max_size=10)), max_size=2),
)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@given(message=messages)
@settings(max_examples=60, deadline=None)
def test_round_trip(serializer: str, message: Message) -> None:
    codec = CODECS[serializer]
    assert decode_message(codec.encode(message), codec.content_type, ACCEPT) == message


def test_result_record_round_trip_both_codecs() -> None:
    record = ResultRecord(task_id="x", state="SUCCESS", result={"a": [1, 2]}, retries=2)
    for codec in CODECS.values():
        assert decode_record(codec.encode(record)) == record


def test_content_type_not_accepted_is_rejected() -> None:
    body = CODECS["msgpack"].encode(Message(id="1", task="t"))
    with pytest.raises(MessageRejected, match="not accepted"):
        decode_message(body, MSGPACK, frozenset({"json"}))


def test_unknown_content_type_and_broken_envelope() -> None:
    with pytest.raises(
        MessageRejected, match="unknown content type 'application/x-python-serialize'"
    ):
        decode_message(b"\x80\x04", "application/x-python-serialize", ACCEPT)  # pickle: never
    with pytest.raises(MessageRejected, match="envelope"):
        decode_message(b"junk", BROKEN_ENVELOPE, ACCEPT)


def test_wrong_types_are_rejected_naming_the_field() -> None:
    body = msgspec.json.encode({"v": 1, "id": "1", "task": "t", "args": "not-a-list"})
    with pytest.raises(MessageRejected, match=r"args"):
        decode_message(body, JSON, ACCEPT)


def test_future_protocol_version_is_rejected() -> None:
    body = msgspec.json.encode({"v": 99, "id": "1", "task": "t"})
    with pytest.raises(MessageRejected, match="version 99"):
        decode_message(body, JSON, ACCEPT)


@given(data=st.binary(max_size=300), content_type=st.sampled_from([JSON, MSGPACK]))
@settings(max_examples=300, deadline=None)
def test_fuzz_random_bytes(data: bytes, content_type: str) -> None:
    _decode_or_reject(data, content_type)


@given(
    message=messages,
    serializer=st.sampled_from(["json", "msgpack"]),
    cut=st.integers(0, 400),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
)
@settings(max_examples=300, deadline=None)
def test_fuzz_truncated_and_mutated(
    message: Message, serializer: str, cut: int, flips: list
) -> None:  # type: ignore[type-arg]
    body = bytearray(CODECS[serializer].encode(message)[: max(1, cut)])
    for position, value in flips:
        body[position % len(body)] = value
    _decode_or_reject(bytes(body), CODECS[serializer].content_type)


field_values = st.one_of(
    st.none(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.booleans(),
)  # fmt: skip


@given(
    field=st.sampled_from([f.name for f in msgspec.structs.fields(Message)]),
    value=field_values,
    serializer=st.sampled_from(["json", "msgpack"]),
)
@settings(max_examples=300, deadline=None)
def test_fuzz_wrong_type_in_every_field(field: str, value: object, serializer: str) -> None:
    raw = msgspec.to_builtins(Message(id="1", task="t"))
    raw[field] = value
    try:
        body = CODECS[serializer].encode(raw)
    except (TypeError, ValueError, OverflowError):
        return
    _decode_or_reject(body, CODECS[serializer].content_type)


def _decode_or_reject(body: bytes, content_type: str) -> None:
    try:
        message = decode_message(body, content_type, ACCEPT)
    except MessageRejected as exc:
        assert exc.reason
    else:
        assert isinstance(message, Message)
