"""Honest and crafted traffic for the poisoning tests: real prose, the real Llama-3 tokenizer."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import quicktok

from litellm_dualpool.core.shape import RequestShape, shape_request

PROMPTS = Path("/work/shared/data/prompts/mt_bench_question.jsonl")
#: Llama-3 chat template framing of one user message (header + eot) and of the prompt.
TOKENS_PER_MESSAGE, TOKENS_PER_PROMPT = 4, 1


@cache
def encoding() -> quicktok.Encoding:
    return quicktok.get_encoding("llama3")


@cache
def prose_turns() -> tuple[str, ...]:
    lines = PROMPTS.read_text(encoding="utf-8").splitlines()
    return tuple(t for line in lines for t in json.loads(line)["turns"])


def honest_text(rng: random.Random, chars: int) -> str:
    turns, parts, size = prose_turns(), [], 0
    while size < chars:
        part = rng.choice(turns)
        parts.append(part)
        size += len(part) + 1
    return " ".join(parts)[:chars]


def low_ratio_attack(junk_chars: int) -> str:
    """Prose first (so the request classifies as prose), then a run of a rare character that
    the tokenizer spells byte by byte: ~1 byte per token overall, inside the ratio bounds."""
    return honest_text(random.Random(7), 1100) + "\ua66e" * junk_chars


def high_ratio_attack(junk_chars: int) -> str:
    """Prose first, then runs of dashes that one token covers 66 bytes of: ~7.5 bytes/token."""
    return honest_text(random.Random(8), 1100) + "-" * junk_chars


def prompt_tokens(text: str) -> int:
    return TOKENS_PER_PROMPT + TOKENS_PER_MESSAGE + len(encoding().encode(text))


def body(text: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": text}]}


@dataclass(frozen=True)
class Sample:
    shape: RequestShape
    prompt_tokens: int


def sample(text: str) -> Sample:
    return Sample(shape_request(body(text)), prompt_tokens(text))
