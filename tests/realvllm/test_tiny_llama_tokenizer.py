"""The tiny model's tokenizer.json (built from quicktok's Llama-3 ranks) tokenizes like Llama-3.

The reference is tiktoken run on the same ranks with Llama-3's pattern and special tokens: that
is how Meta's own Llama-3 tokenizer works. quicktok ("llama3", the project's ground truth) agrees
on English, code and JSON; on some Japanese words it merges differently from true BPE (a
quicktok deviation, pinned below so that a fix shows up). Needs only `tokenizers` and
`tiktoken`, both in the main environment (LiteLLM's dependencies): no vLLM environment.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import quicktok
import tiktoken
import tokenizers

from tests.realvllm import build_tiny_llama as builder
from tests.realvllm.conftest import quicktok_data_dir

pytestmark = pytest.mark.realvllm

PROMPTS = Path("/work/shared/data/prompts")


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> tokenizers.Tokenizer:
    out = builder.build(quicktok_data_dir(), tmp_path_factory.mktemp("tok") / "tiny",
                        tokenizer_only=True)
    return tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))


@pytest.fixture(scope="module")
def reference() -> tiktoken.Encoding:
    data = quicktok_data_dir()
    return tiktoken.Encoding(
        name="llama3-reference", pat_str=builder.LLAMA3_PATTERN,
        mergeable_ranks=builder.read_vocab(data / "llama3.vocab"),
        special_tokens=builder.read_specials(data / "llama3.special"))


def jsonl(name: str) -> list[dict]:
    opener = gzip.open if name.endswith(".gz") else open
    with opener(PROMPTS / name, "rt", encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def english() -> list[str]:
    return [" ".join(row["turns"]) for row in jsonl("mt_bench_question.jsonl")]


def python_code() -> list[str]:
    return [row["prompt"] + row["canonical_solution"] for row in jsonl("HumanEval.jsonl.gz")]


def japanese() -> list[str]:
    return [" ".join(row["turns"]) for row in jsonl("japanese_mt_bench_question.jsonl")]


def tool_json() -> list[str]:
    """Function-calling JSON (BFCL), in 4 KB slices."""
    text = (PROMPTS / "BFCL_v4_live_simple.json").read_text(encoding="utf-8")[:200_000]
    return [text[i:i + 4000] for i in range(0, len(text), 4000)]


ODD = [
    "", " ", "\n\n\n", "   leading\n\ttabs and  spaces   \r\n windows lines \r\n",
    "don't can't I'll we've they're 'tis 'TWAS", "1234567890 3.14159 0xDEADBEEF 99.99%",
    "emoji \U0001f680\U0001f525\U0001f44d mixed", "café résumé naïve — Zürich", "Ω≈ç√∫ Икс हिन्दी",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "a <|reserved_special_token_7|> b <|eot_id|>",
]


def hf_ids(hf: tokenizers.Tokenizer, text: str) -> list[int]:
    return list(hf.encode(text, add_special_tokens=False).ids)


def test_the_vocabulary_is_llama3s(reference: tiktoken.Encoding) -> None:
    assert reference.n_vocab == 128256
    assert reference.encode("<|begin_of_text|><|eot_id|>", allowed_special="all") == [
        128000, 128009]
    assert reference.encode("Hello, world!") == [9906, 11, 1917, 0]


def test_the_tokenizer_matches_tiktoken_on_llama3_ranks(
        hf: tokenizers.Tokenizer, reference: tiktoken.Encoding) -> None:
    texts = english() + python_code() + japanese() + tool_json() + ODD
    mismatched = [t[:60] for t in texts
                  if hf_ids(hf, t) != reference.encode(t, allowed_special="all")]
    assert mismatched == []


def test_the_tokenizer_matches_quicktok_outside_cjk(hf: tokenizers.Tokenizer) -> None:
    encoding = quicktok.get_encoding("llama3")
    texts = english() + python_code() + tool_json() + ODD
    mismatched = [t[:60] for t in texts if hf_ids(hf, t) != encoding.encode_with_special(t)]
    assert mismatched == []


def test_quicktok_deviates_from_bpe_on_some_japanese(hf: tokenizers.Tokenizer,
                                                      reference: tiktoken.Encoding) -> None:
    # True BPE never forms "しない" here (no merge chain reaches it); quicktok does. Counts differ
    # by up to 3 tokens in 6 of the 80 Japanese MT-Bench questions (6 tokens in 9,296 overall).
    text = "と一致しないものはどれ"
    assert hf_ids(hf, text) == reference.encode(text)
    assert len(quicktok.get_encoding("llama3").encode(text)) == len(reference.encode(text)) - 2
    differing = [t for t in japanese() if hf_ids(hf, t) != quicktok.get_encoding(
        "llama3").encode_with_special(t)]
    assert 0 < len(differing) <= 10


def test_bos_is_added_like_llama3(hf: tokenizers.Tokenizer) -> None:
    assert hf.encode("Hello, world!").ids == [128000, 9906, 11, 1917, 0]
    assert hf.decode([128000, 9906, 11, 1917, 0], skip_special_tokens=True) == "Hello, world!"


def test_builder_reuses_an_up_to_date_directory(tmp_path: Path) -> None:
    out = builder.build(quicktok_data_dir(), tmp_path / "m", tokenizer_only=True)
    stamp = (out / ".stamp").read_text()
    (out / "tokenizer.json").write_text("{}")  # untouched when the stamp matches
    assert builder.build(quicktok_data_dir(), out, tokenizer_only=True) == out
    assert (out / "tokenizer.json").read_text() == "{}"
    (out / ".stamp").write_text("stale\n")
    builder.build(quicktok_data_dir(), out, tokenizer_only=True)
    assert (out / ".stamp").read_text() == stamp
    assert json.loads((out / "tokenizer.json").read_text())["model"]["type"] == "BPE"
