"""The SSE decoder gives the same events wherever the chunk boundaries fall."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from providers.sse import Event, SSEDecoder, encode

STREAM = (
    b": keep-alive\n\n"
    b'data: {"a": 1}\n\n'
    b'event: message_start\r\ndata: {"b":\r\ndata: 2}\r\n\r\n'
    b"data:no-space\rid: 7\r\r"
    b"retry: 10\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    Event(b'{"a": 1}'),
    Event(b'{"b":\n2}', "message_start"),
    Event(b"no-space"),
    Event(b"[DONE]"),
]


def decode(chunks: list[bytes]) -> list[Event]:
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def test_whole_stream() -> None:
    assert decode([STREAM]) == EXPECTED


def test_byte_by_byte_including_split_crlf() -> None:
    assert decode([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_chunking(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    assert decode([STREAM[a:b] for a, b in itertools.pairwise(points)]) == EXPECTED


@given(
    st.lists(
        st.binary(min_size=0, max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=6
    )
)
def test_encode_then_decode_round_trips(payloads: list[bytes]) -> None:
    frames = b"".join(encode(p, "e" if i % 2 else None) for i, p in enumerate(payloads))
    assert decode([frames]) == [Event(p, "e" if i % 2 else None) for i, p in enumerate(payloads)]


def test_incomplete_event_waits_for_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n") == []
    assert decoder.feed(b"\n") == [Event(b"x")]
