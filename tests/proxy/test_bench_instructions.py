"""bench/instructions.py: its worker runs the profile bench's requests without waiting (what
callgrind counts), and the totals are read from callgrind's dumps. The valgrind run itself takes
minutes (LiteLLM's import under valgrind) and is not part of the suite."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import instructions  # noqa: E402


def test_worker_runs_each_cell_to_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    instructions.worker(["far", "ambiguous-off"], ["1KB"], requests=3, warmup=20)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()
             if line.startswith("{")]
    assert lines == [{"scenario": "far", "size": "1KB"},
                     {"scenario": "ambiguous-off", "size": "1KB"}]


def test_a_hook_that_waits_is_refused() -> None:
    async def waits() -> None:
        import asyncio

        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="waited"):
        instructions._finish(waits())


def test_totals_are_read_from_a_callgrind_dump(tmp_path: Path) -> None:
    dump = tmp_path / "cg.1.1"
    dump.write_text("# callgrind format\nversion: 1\nevents: Ir\n\nsummary: 123456\n"
                    "fl=(1) x.c\nfn=(1) f\n1 10\n\ntotals: 123456\n")
    assert instructions._total(dump) == 123456
    empty = tmp_path / "cg.1.2"
    empty.write_text("events: Ir\n")
    with pytest.raises(SystemExit):
        instructions._total(empty)
