"""bench/proxy_instructions.py: the collector's share is read from callgrind_annotate's output,
totals from the dump, and every counted request is a distinct body of its size. The valgrind
run itself (minutes per proxy) is not part of the suite."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import proxy_instructions  # noqa: E402

ANNOTATION = """\
--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
8,372,742,997 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                     file:function
--------------------------------------------------------------------------------
8,000,000,000 (95.5%)  /tmp/py/Python-3.11.7/Python/ceval.c:_PyEval_EvalFrameDefault'2 [/lib/libpython3.11.so]
  286,835,304 ( 3.43%)  /tmp/py/Python-3.11.7/Modules/gcmodule.c:gc_collect_main [/lib/libpython3.11.so.1.0]
  100,000,000 ( 1.19%)  /tmp/py/Python-3.11.7/Modules/gcmodule.c:gc_collect_main'2 [/lib/libpython3.11.so.1.0]
      266,422 ( 0.00%)  /tmp/py/Python-3.11.7/./Include/object.h:gc_collect_main
       12,000 ( 0.00%)  /tmp/py/Python-3.11.7/Modules/gcmodule.c:gc_collect_main_helper
"""


def test_the_collector_is_its_entry_points_inclusive_count() -> None:
    got = proxy_instructions.inclusive_from_annotation(ANNOTATION, "gcmodule.c:gc_collect_main")
    assert got == 286_835_304  # not the inlined copy, not a similarly named function


def test_a_function_that_never_ran_costs_nothing() -> None:
    assert proxy_instructions.inclusive_from_annotation(ANNOTATION, "gcmodule.c:nothing") == 0


def test_the_total_is_read_from_the_dump(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1.1"
    dump.write_text("events: Ir\nsummary: 8372742997\nfl=(1) x.c\nfn=(1) f\n1 10\n"
                    "totals: 8372742997\n")
    assert proxy_instructions.dump_total(dump) == 8_372_742_997
    empty = tmp_path / "callgrind.out.1.2"
    empty.write_text("events: Ir\n")
    with pytest.raises(SystemExit):
        proxy_instructions.dump_total(empty)


def test_counted_bodies_are_distinct_and_of_their_size() -> None:
    batch = list(proxy_instructions.bodies("32KB", 3, offset=700))
    texts = [json.dumps(body) for body in batch]
    assert len(set(texts)) == 3
    assert all(30_000 < len(text.encode()) < 40_000 for text in texts)
    assert "[request 700] " in batch[0]["messages"][-1]["content"]
    assert all(body["model"] == "llama" and body["max_tokens"] == 16 for body in batch)


def test_a_cache_simulation_gives_misses_and_the_cycle_estimate(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1.1"
    dump.write_text("events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\n"
                    "summary: 1000 400 200 10 20 30 1 2 3\n")
    events = proxy_instructions.dump_events(dump)
    assert events["Ir"] == 1000 and events["DLmw"] == 3
    figures = proxy_instructions.cache_figures(events, requests=10)
    assert figures == {"l1_misses_per_request": 6, "ll_misses_per_request": 1,
                       "estimated_cycles_per_request": (1000 + 10 * 60 + 100 * 6) // 10}
