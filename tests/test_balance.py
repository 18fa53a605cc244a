"""The replica choice (gateway/balance.py), without a network: least loaded, prefix affinity with
bounded load, and the queue limits of `spill_when`."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from gateway.balance import Load, Ring, by_affinity, candidates, least_loaded, prefix_key, saturated
from gateway.config import ConfigError, build, parse
from gateway.replicas import circuit_names, labels_of


def test_the_least_loaded_replica_is_chosen_and_ties_take_turns() -> None:
    loads = [Load(in_flight=3), Load(in_flight=1), Load(in_flight=2)]
    assert least_loaded(loads, [0, 1, 2], turn=0) == 1
    idle = [Load(), Load(), Load()]
    assert Counter(least_loaded(idle, [0, 1, 2], turn) for turn in range(30)) == {0: 10, 1: 10, 2: 10}


def test_a_replicas_own_queue_counts_beyond_the_requests_that_were_ours() -> None:
    # Replica 0 reported 6 waiting + 2 running while 2 of those were ours: 6 others' requests there.
    busy = Load(in_flight=2, waiting=6, running=2, ours_at_scrape=2)
    assert busy.score == 8
    assert least_loaded([busy, Load(in_flight=5)], [0, 1], turn=0) == 1
    # Its KV cache breaks a tie, and weighs less than one request.
    assert least_loaded([Load(in_flight=1, kv_cache=0.9), Load(in_flight=1)], [0, 1], turn=0) == 1
    assert least_loaded([Load(in_flight=1, kv_cache=0.9), Load(in_flight=2)], [0, 1], turn=0) == 0


def test_candidates_skip_down_and_tried_replicas_while_others_remain() -> None:
    loads = [Load(up=False), Load(), Load()]
    assert candidates(loads) == [1, 2]
    assert candidates(loads, frozenset({1})) == [2]
    assert candidates(loads, frozenset({1, 2})) == [1, 2]  # every live one tried: any live one again
    down = [Load(up=False), Load(up=False)]
    assert candidates(down) == [0, 1]  # all down: try them rather than refuse
    assert candidates(down, frozenset({0})) == [1]


def test_the_ring_keeps_a_key_on_its_replica_and_moves_only_a_removed_replicas_keys() -> None:
    keys = range(0, 2**64, 2**64 // 2000)
    three = Ring(["a:1", "b:2", "c:3"])
    two = Ring(["a:1", "b:2"])
    owners3 = [three.walk(k)[0] for k in keys]
    owners2 = [two.walk(k)[0] for k in keys]
    share = Counter(owners3)
    assert all(500 < share[i] < 830 for i in range(3)), share  # even within a few tens of %
    assert all(o3 == o2 for o3, o2 in zip(owners3, owners2, strict=True) if o3 != 2)
    assert sorted(three.walk(12345)) == [0, 1, 2]


def test_affinity_sticks_to_the_keys_replica_until_it_carries_more_than_its_bound() -> None:
    ring = Ring(["a:1", "b:2"])
    key = 2**63
    home, other = ring.walk(key)
    loads = [Load(), Load()]
    assert by_affinity(ring, key, loads, [0, 1], max_load=1.25, turn=0) == home
    loads[home].in_flight = 2
    loads[other].in_flight = 1
    assert by_affinity(ring, key, loads, [0, 1], max_load=1.25, turn=0) == home  # 3 <= ceil(1.25*4/2)
    loads[home].in_flight = 4
    assert by_affinity(ring, key, loads, [0, 1], max_load=1.25, turn=0) == other
    assert by_affinity(ring, key, loads, [other], max_load=1.25, turn=0) == other  # home is down


def test_the_prefix_key_is_the_conversation_so_far_up_to_a_length() -> None:
    system = {"role": "system", "content": "You are a careful assistant. " * 20}
    a = {"messages": [system, {"role": "user", "content": "first question"}]}
    b = {"messages": [system, {"role": "user", "content": "another question"}]}
    assert prefix_key(a, 200) == prefix_key(b, 200)  # the system prompt alone fills 200 characters
    assert prefix_key(a, 5000) != prefix_key(b, 5000)
    parts = {"messages": [{"role": "system", "content": [{"type": "text", "text": system["content"]}]}]}
    assert prefix_key(parts, 200) == prefix_key(a, 200)
    anthropic = {"system": system["content"], "messages": [{"role": "user", "content": "first question"}]}
    assert prefix_key(anthropic, 200) == prefix_key(a, 200)  # Anthropic's system field is the same prefix
    assert prefix_key({"prompt": "abc"}, 10) == prefix_key({"prompt": "abcdef"}, 3)
    responses = {"instructions": system["content"], "input": "first question"}
    assert prefix_key(responses, 5000) == prefix_key(a, 5000)  # a Responses request's is the same prefix
    items = {"instructions": system["content"], "input": [{"role": "user", "content": "first question"}]}
    assert prefix_key(items, 5000) == prefix_key(a, 5000)
    assert prefix_key({"messages": []}, 10) is None
    assert prefix_key({"input": 1}, 10) is None


def test_a_replica_is_saturated_past_either_spill_when_limit() -> None:
    assert saturated(Load(waiting=6), waiting_over=5, kv_cache_over=None)
    assert not saturated(Load(waiting=5), waiting_over=5, kv_cache_over=None)
    assert saturated(Load(kv_cache=0.95), waiting_over=5, kv_cache_over=0.9)
    assert not saturated(Load(kv_cache=0.95), waiting_over=5, kv_cache_over=None)


def _backend(**keys: Any) -> dict[str, Any]:
    return {"kind": "openai_compatible", "models": [{"name": "m"}], **keys}


def test_replica_labels_and_circuit_names_come_from_the_config() -> None:
    assert labels_of(["http://10.0.0.1:8000/v1", "http://u:p@10.0.0.2:8000/v1"]) == [
        "10.0.0.1:8000",
        "10.0.0.2:8000",
    ]
    assert labels_of(["http://h:8000/a", "http://h:8000/b"]) == ["0", "1"]
    spec = _backend(replicas=["http://a:1/v1", "http://b:2/v1"], circuit_breaker={"failures": 1})
    settings = build(parse({"backends": {"pool": spec, "one": _backend(base_url="http://c/v1")}}), {})
    assert circuit_names(settings.backends["pool"]) == ["pool/a:1", "pool/b:2"]
    assert circuit_names(settings.backends["one"]) == ["one"]
    assert settings.backends["pool"].base_url == "http://a:1/v1"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"base_url": "http://a/v1", "replicas": ["http://b/v1"]}, "not both"),
        ({}, "base_url or replicas is required"),
        ({"replicas": []}, "replicas: List should have at least 1 item"),
        ({"replicas": ["http://a/v1", "http://a/v1/"]}, "each replica's URL must differ"),
        ({"base_url": "http://a/v1", "spill_when": {"waiting_over": 4}}, "set scrape_metrics: true"),
        (
            {"base_url": "http://a/v1", "scrape_metrics": True, "spill_when": {}},
            "waiting_over or kv_cache_over",
        ),
        ({"replicas": ["http://a/v1"], "affinity": "session"}, "affinity"),
        ({"base_url": "http://a/v1", "affinity": "prefix"}, "give replicas"),
    ],
)
def test_bad_replica_configs_name_their_key(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        build(parse({"backends": {"pool": _backend(**keys)}}), {})
    assert "backends.pool" in str(caught.value)
