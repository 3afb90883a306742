"""The real prompt sets in ../shared/data/prompts, as the tests use them (one copy of the
helpers; tests/ is on sys.path through its conftest)."""

from __future__ import annotations

import json
from pathlib import Path

PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts"
#: MT-Bench categories whose questions are plain English prose (no maths, code or extraction)
PROSE_CATEGORIES = ("writing", "roleplay", "humanities", "stem", "reasoning")


def mt_bench_questions() -> list[str]:
    """Each prose question of MT-Bench, its turns joined."""
    rows = [json.loads(line) for line in (PROMPTS / "mt_bench_question.jsonl").read_text(
        encoding="utf-8").splitlines() if line]
    return [" ".join(row["turns"]) for row in rows if row["category"] in PROSE_CATEGORIES]


def mt_bench_prose(n_bytes: int, offset: int = 0) -> str:
    """Real English questions joined until `n_bytes`, a different mix per offset."""
    texts, out, i = mt_bench_questions(), [], offset
    while sum(len(t.encode()) + 1 for t in out) < n_bytes:
        out.append(texts[i % len(texts)])
        i += 1
    return " ".join(out)
