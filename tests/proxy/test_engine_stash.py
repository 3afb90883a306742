"""The per-request stash must carry the whole shape, character counts included, to learning."""

from __future__ import annotations

from litellm_dualpool.core.shape import shape_request
from litellm_dualpool.proxy.engine import _shape_from_list, _shape_to_list


def test_stash_round_trip_keeps_character_counts() -> None:
    body = {"messages": [{"role": "user", "content": "def f(x):\n    return x + 1  # 42 ÄÖ"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    shape = shape_request(body)
    assert shape.char_counts is not None
    assert _shape_from_list(_shape_to_list(shape)) == shape
