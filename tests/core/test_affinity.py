"""Conversation affinity's rule and table (core/affinity.py)."""

from __future__ import annotations

from typing import Any

import pytest

from litellm_dualpool.core.affinity import (
    AffinityOutcome,
    AffinitySettings,
    AffinityTable,
    conversation_key,
    hold,
    is_continuation,
    session_id_of,
)
from litellm_dualpool.core.policy import Decision, PoolState, Reason

POOLS = [PoolState("short", 8192, 0.1), PoolState("mid", 32768, 0.1),
         PoolState("long", 131072, 0.1)]


def turns(first: str, n: int, system: str = "be brief") -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": first}]
    for i in range(n - 1):
        messages += [{"role": "assistant", "content": f"a{i}"}, {"role": "user", "content": f"u{i}"}]
    return messages


def test_a_turn_looks_up_the_previous_turns_key_and_tenants_do_not_share() -> None:
    key = conversation_key("t1", "llama", None, turns("hello", 1))
    assert key is not None
    assert conversation_key("t1", "llama", None, turns("hello", 2), previous=True) == key
    second = conversation_key("t1", "llama", None, turns("hello", 2))
    assert conversation_key("t1", "llama", None, turns("hello", 3), previous=True) == second
    assert conversation_key("t2", "llama", None, turns("hello", 2), previous=True) != key
    assert conversation_key("t1", "other", None, turns("hello", 2), previous=True) != key
    assert conversation_key("t1", "llama", None, turns("hello!", 2), previous=True) != key
    assert conversation_key("t1", "llama", None, turns("hello", 2, system="x"),
                            previous=True) != key


def test_a_fixed_prompt_and_first_instruction_do_not_make_one_conversation() -> None:
    """Agents sharing a system prompt and a first user message differ in what follows."""
    def agent(call: str) -> list[dict[str, Any]]:
        return [{"role": "system", "content": "tools"}, {"role": "user", "content": "go"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": call, "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "{}"},
                {"role": "user", "content": "next?"}]
    a = conversation_key("t", "g", None, agent("search"))
    assert a != conversation_key("t", "g", None, agent("fetch"))
    # the next turn of agent a, after the assistant's answer, finds a's pin
    follow = [*agent("search"), {"role": "assistant", "content": "done"},
              {"role": "user", "content": "thanks"}]
    assert conversation_key("t", "g", None, follow, previous=True) == a


def test_long_messages_count_by_length_head_and_tail() -> None:
    base = "x" * 5000
    one = conversation_key("t", "g", None, [{"role": "user", "content": base}])
    assert one == conversation_key("t", "g", None, [{"role": "user", "content": base}])
    middle = base[:2500] + "y" + base[2501:]  # same length, head and tail: the same summary
    assert one == conversation_key("t", "g", None, [{"role": "user", "content": middle}])
    assert one != conversation_key("t", "g", None, [{"role": "user", "content": base + "x"}])


def test_a_session_id_names_the_conversation_whatever_its_messages() -> None:
    a = conversation_key("t1", "llama", "sess-1", turns("hello", 1))
    assert a == conversation_key("t1", "llama", "sess-1", turns("other", 4))
    assert a != conversation_key("t2", "llama", "sess-1", turns("hello", 1))
    assert a != conversation_key("t1", "llama", None, turns("hello", 1))


def test_nothing_names_a_conversation_without_messages_or_an_earlier_answer() -> None:
    assert conversation_key("t", "g", None, None) is None
    assert conversation_key("t", "g", None, []) is None
    assert conversation_key("t", "g", None, "text") is None
    assert conversation_key("t", "g", None, turns("hello", 1), previous=True) is None


def test_only_a_request_with_an_earlier_assistant_turn_continues() -> None:
    assert not is_continuation(turns("hello", 1))
    assert is_continuation(turns("hello", 2))
    assert not is_continuation([{"role": "user", "content": "a"}] * 3)
    assert is_continuation([{"role": "user", "content": "a"}, {"role": "assistant",
                                                               "content": "b"}])
    assert not is_continuation(None)


@pytest.mark.parametrize(("decision", "pinned", "want_pool", "outcome"), [
    (Decision("short", Reason.FITS, 6000, 8192), "long", "long", AffinityOutcome.HELD),
    (Decision("short", Reason.FITS, 6000, 8192), "short", "short", AffinityOutcome.AGREED),
    (Decision("long", Reason.FITS, 60000, 131072), "mid", "long", AffinityOutcome.AGREED),
    (Decision("short", Reason.FITS, 6000, 8192), "gone", "short", AffinityOutcome.NOT_FITTING),
    (Decision("mid", Reason.FITS, 20000, 32768), "long", "long", AffinityOutcome.HELD),
    (Decision("short", Reason.FORCED, 6000, 8192), "long", "short", None),
    (Decision("short", Reason.FITS, 6000, 8192), None, "short", None),
])
def test_hold_is_upward_only(decision: Decision, pinned: str | None, want_pool: str,
                             outcome: AffinityOutcome | None) -> None:
    held, got = hold(decision, pinned, POOLS, spillover_load_fraction=0.9)
    assert (held.pool, got) == (want_pool, outcome)
    if got is AffinityOutcome.HELD:
        assert held.reason is Reason.AFFINITY and held.limit_tokens == 131072
        assert held.budget_tokens == decision.budget_tokens


def test_hold_never_sends_where_the_caller_may_not_go_or_the_budget_does_not_fit() -> None:
    decision = Decision("short", Reason.FITS, 6000, 8192)
    assert hold(decision, "long", POOLS, allowed_pools=frozenset({"short", "mid"}))[1] is (
        AffinityOutcome.NOT_FITTING)
    big = Decision("long", Reason.BORDERLINE, 200_000, 131072)
    assert hold(big, "mid", POOLS)[0] is big
    small_pools = [PoolState("short", 8192), PoolState("long", 16384)]
    over = Decision("short", Reason.FITS, 20_000, 8192)  # cannot happen, but must not move
    assert hold(over, "long", small_pools)[1] is AffinityOutcome.NOT_FITTING


def test_hold_yields_to_a_saturated_pool() -> None:
    busy = [PoolState("short", 8192, 0.1), PoolState("long", 131072, 0.95)]
    decision = Decision("short", Reason.FITS, 6000, 8192)
    assert hold(decision, "long", busy, spillover_load_fraction=0.9) == (
        decision, AffinityOutcome.SATURATED)
    assert hold(decision, "long", busy, spillover_load_fraction=None)[0].pool == "long"


def test_table_is_bounded_least_recently_used_first_out() -> None:
    table = AffinityTable(AffinitySettings(max_conversations=3, ttl_seconds=100))
    for i in range(3):
        assert table.pin(i, "long", 131072, now=float(i)) == [AffinityOutcome.PINNED]
    assert table.lookup(0, now=5.0) == ("long", None)  # refreshes: 1 is now the oldest
    assert table.pin(3, "long", 131072, now=6.0) == [AffinityOutcome.PINNED,
                                                     AffinityOutcome.EVICTED]
    assert len(table) == 3
    assert table.lookup(1, now=7.0) == (None, None)
    assert table.lookup(0, now=7.0)[0] == "long"


def test_table_pins_expire_after_the_ttl_and_a_use_refreshes_them() -> None:
    table = AffinityTable(AffinitySettings(max_conversations=10, ttl_seconds=10))
    table.pin(1, "long", 131072, now=0.0)
    assert table.lookup(1, now=9.0) == ("long", None)
    assert table.lookup(1, now=18.0) == ("long", None)  # 9 s after the last use
    assert table.lookup(1, now=30.0) == (None, AffinityOutcome.EXPIRED)
    assert table.lookup(1, now=30.0) == (None, None) and len(table) == 0


def test_a_pin_only_moves_up() -> None:
    table = AffinityTable(AffinitySettings())
    table.pin(1, "mid", 32768, now=0.0)
    assert table.pin(1, "short", 8192, now=1.0) == []
    assert table.lookup(1, now=2.0)[0] == "mid"
    assert table.pin(1, "long", 131072, now=3.0) == [AffinityOutcome.PINNED]
    assert table.lookup(1, now=4.0)[0] == "long"


def test_table_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_conversations"):
        AffinityTable(AffinitySettings(max_conversations=0))


def test_a_generated_session_id_is_no_conversation() -> None:
    flag = "litellm_session_id_generated"
    assert session_id_of({"session_id": "s1"}, flag) == "s1"
    assert session_id_of({"session_id": "s1", flag: True}, flag) is None
    assert session_id_of({}, flag) is None and session_id_of(None, flag) is None
