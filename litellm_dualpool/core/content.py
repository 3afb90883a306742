"""What the text is made of, read from bounded, evenly spread samples of the strings.

Tokenizers compress classes of text very differently (English prose ~4.5 bytes/token, Python
~3.4, CJK 2-4 with 3-byte characters, JSON ~3.9), and within a class the count follows the
characters: spaces mostly merge into the next word, digits split into groups, punctuation and
capitals often stand alone. So besides the content class we estimate a few character counts
(spaces, newlines, digits, ASCII punctuation, capitals), which the calibrator learns token
costs for. The cost is bounded whatever the body's size: when the strings hold more than
`SAMPLE_CHARS` characters, the counts of single characters come from a systematic sample (every
k-th character of the concatenated strings, cut in C by extended slicing), and the counts of
character sequences (4-space runs, indented lines, `":`) from `NGRAM_SAMPLE_CHARS` characters
of evenly spaced slices; both are extrapolated by (all characters / sampled characters). A
systematic sample of single characters has a much smaller error than contiguous slices of the
same size (neighbouring characters are alike), and for prose the token count follows the space
count closely, so that error goes straight into the estimate (bench/estimator_accuracy.py,
Llama-3 prose, MAPE after 50 with a 0.998 window: 4K characters in 32-character slices 0.0199,
these samples 0.0181, exact counts 0.0164; at about the same CPU cost). Counting runs in C
(one `bytes.translate` into class codes and a `bytes.count` per class) over the samples' UTF-8 encoding.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import astuple, dataclass

#: Characters sampled per request (text and structured strings each) for single-character
#: counts; strings up to this size are counted exactly.
SAMPLE_CHARS = 8192
#: Characters (in slices of `NGRAM_SLICE_CHARS`) sampled for the counts of character sequences.
NGRAM_SAMPLE_CHARS = 1024
#: Slice length of the sequence sample (fewer, longer slices: each costs ~0.3 us of Python).
NGRAM_SLICE_CHARS = 128
#: Up to this many characters the 4-space runs are counted over the whole strings (one C-level
#: `str.count` pass, ~0.7 ns per byte: ~23 us at 32 KB, ~90 us at the bound), above it from
#: the sequence sample. Indentation is the feature whose sampling error cost code the most
#: (bench/estimator_accuracy.py, docs/estimator.md): 8 slices of 128 characters see too few.
EXACT_RUN_CHARS = 131072
#: Share of CJK characters (3-byte UTF-8 sequences led by 0xE3-0xED: kana, CJK ideographs,
#: hangul) in the sample above which the request counts as CJK.
CJK_CHAR_FRACTION = 0.15
#: Code marks (brackets, operators, `_#`; plus 4 per indented line start) per character above
#: which the text counts as code (MT-Bench English p95 0.06, HumanEval Python p5 0.09).
CODE_MARK_DENSITY = 0.07
#: Structured (JSON) bytes above this share of all bytes make the request "structured".
STRUCTURED_BYTE_FRACTION = 0.5

_DIGITS = b"0123456789"
_PUNCT = bytes(c for c in range(33, 127) if not chr(c).isalnum())
_UPPER = bytes(range(65, 91))
_CODE_MARKS = b"{}()[];=<>_#*/\\|&$%^~`@+"
_CJK_LEADS = bytes(range(0xE3, 0xEE))
_NON_SPACE = re.compile(r"\S")


def _class_table() -> bytes:
    """A `bytes.translate` table naming each byte's class by one code byte: one translation and
    a `count` per class (a deleting translation per class costs ~2x; `np.bincount` is faster
    alone but showed up at ~40% of the plugin's samples inside the proxy, see
    docs/performance.md)."""
    table = bytearray(b"." * 256)
    for codes, mark in ((_PUNCT, b"!"), (_CODE_MARKS, b"#"), (_DIGITS, b"0"), (_UPPER, b"A"),
                        (_CJK_LEADS, b"j"), (b"\xe3", b"k")):
        for byte in codes:
            table[byte] = mark[0]
    return bytes(table)


#: Code marks are punctuation too ("#" counts for both), 0xE3 (kana) is a CJK lead ("k" for both).
_CLASSES = _class_table()


@dataclass(frozen=True, slots=True)
class CharCounts:
    """Estimated character counts of a request's strings (extrapolated from a sample), plus
    `multibyte_extra_bytes` = UTF-8 bytes - characters (exact).

    space_runs: runs of four spaces (indentation: tokenizers merge them into one token).
    kana: characters led by the UTF-8 byte 0xE3 (kana, CJK punctuation), which tokenize
        differently from ideographs.
    """

    spaces: int
    newlines: int
    digits: int
    punctuation: int
    uppercase: int
    multibyte_extra_bytes: int
    space_runs: int = 0
    kana: int = 0

    def __add__(self, other: CharCounts) -> CharCounts:
        return CharCounts(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


ZERO_COUNTS = CharCounts(0, 0, 0, 0, 0, 0)


def sample(strings: Sequence[str], total_chars: int, budget: int = SAMPLE_CHARS,
           slice_chars: int = 1) -> str:
    """At most `budget` characters of the concatenated strings: slices of `slice_chars` at a
    fixed stride, the first half a stride in. With `slice_chars` 1 that is every k-th
    character, cut by one extended slice per string (C speed); a string shorter than the
    stride may contribute nothing."""
    if total_chars <= budget:
        return "".join(strings)
    stride = -(-total_chars * slice_chars // budget)
    pieces: list[str] = []
    first = stride // 2  # position of the next slice, relative to the current string
    for s in strings:
        n = len(s)
        if first < n:
            if slice_chars == 1:
                pieces.append(s[first::stride])
            else:
                pieces += [s[p : p + slice_chars] for p in range(first, n, stride)]
            first += ((n - first + stride - 1) // stride) * stride
        first -= n
    return "".join(pieces)


def measure_strings(strings: Sequence[str], total_chars: int, budget: int = SAMPLE_CHARS,
                    ngram_budget: int = NGRAM_SAMPLE_CHARS,
                    exact_run_chars: int = EXACT_RUN_CHARS) -> SampleStats:
    """Counts over the strings: exact up to `budget` characters, else single-character
    counts from every k-th character and sequence counts from slices, scaled to the former;
    4-space runs exactly up to `exact_run_chars`."""
    if total_chars <= budget:
        return measure("".join(strings))
    first = next((m.group() for m in map(_NON_SPACE.search, strings) if m), "")
    singles = sample(strings, total_chars, budget)
    seq = sample(strings, total_chars, ngram_budget, NGRAM_SLICE_CHARS)
    f = len(singles) / len(seq) if seq else 0.0
    sequences = [round(n * f) for n in _sequence_counts(seq.encode("utf-8", "surrogatepass"),
                                                         first)]
    exact_runs = (sum(s.count("    ") for s in strings) if total_chars <= exact_run_chars
                  else None)
    return _stats(len(singles), _single_counts(singles.encode("utf-8", "surrogatepass")),
                  sequences, first, exact_runs)


@dataclass(frozen=True, slots=True)
class SampleStats:
    """Raw counts over one sample (before extrapolation)."""

    chars: int
    spaces: int
    newlines: int
    digits: int
    punctuation: int
    uppercase: int
    code_marks: int
    indents: int
    space_runs: int
    kana: int
    cjk: int
    json_pairs: int
    first: str
    #: 4-space runs counted over all the strings (final, not scaled); None when sampled
    exact_space_runs: int | None = None

    def scaled(self, total_chars: int, extra_bytes: int) -> CharCounts:
        if not self.chars:
            return CharCounts(0, 0, 0, 0, 0, extra_bytes)
        f = total_chars / self.chars
        runs = (self.exact_space_runs if self.exact_space_runs is not None
                else round(self.space_runs * f))
        return CharCounts(round(self.spaces * f), round(self.newlines * f), round(self.digits * f),
                          round(self.punctuation * f), round(self.uppercase * f), extra_bytes,
                          runs, round(self.kana * f))


def _single_counts(raw: bytes) -> list[int]:
    """(spaces, newlines, digits, punctuation, uppercase, code marks, kana, CJK) in `raw`."""
    classes = raw.translate(_CLASSES)
    code_marks = classes.count(b"#")
    kana = cjk = 0
    # (`in` finds a byte with memchr, ~20x faster than a `count` pass: text with a few curly
    # quotes or accents, not ASCII yet without CJK, skips two passes)
    if not raw.isascii() and (b"j" in classes or b"k" in classes):
        kana = classes.count(b"k")
        cjk = kana + classes.count(b"j")
    return [raw.count(b" "), raw.count(b"\n"), classes.count(b"0"),
            code_marks + classes.count(b"!"), classes.count(b"A"), code_marks, kana, cjk]


def _sequence_counts(raw: bytes, first: str) -> list[int]:
    """(indented line starts, 4-space runs, `":` pairs if the text starts like JSON)."""
    return [raw.count(b"\n    "), raw.count(b"    "),
            raw.count(b'":') if first in ("{", "[") else 0]


def _stats(chars: int, singles: list[int], sequences: list[int], first: str,
           exact_space_runs: int | None = None) -> SampleStats:
    spaces, newlines, digits, punctuation, uppercase, code_marks, kana, cjk = singles
    indents, space_runs, json_pairs = sequences
    return SampleStats(chars=chars, spaces=spaces, newlines=newlines, digits=digits,
                       punctuation=punctuation, uppercase=uppercase, code_marks=code_marks,
                       indents=indents, space_runs=space_runs, kana=kana, cjk=cjk,
                       json_pairs=json_pairs, first=first, exact_space_runs=exact_space_runs)


def measure(text: str) -> SampleStats:
    """Counts over a (bounded) text, in C: one class translation of its UTF-8 bytes and a
    `count` per class (`_single_counts`), plus one `count` pass per character sequence."""
    raw = text.encode("utf-8", "surrogatepass")
    first = text.lstrip()[:1]
    return _stats(len(text), _single_counts(raw), _sequence_counts(raw, first), first)


def classify(stats: SampleStats | None, text_bytes: int, structured_bytes: int,
             tools: bool = False) -> str:
    """One of "prose", "code", "cjk", "structured" (the values of shape.ContentClass).

    `tools`: the request defines tools or carries tool calls. Such requests are "structured"
    whatever their text: chat templates frame them very differently (a tool preamble, call
    wrappers), which a key that never saw tools cannot know.
    """
    total = text_bytes + structured_bytes
    if tools or (total and structured_bytes >= STRUCTURED_BYTE_FRACTION * total):
        return "structured"
    if stats is None or not stats.chars:
        return "prose"
    if stats.cjk >= CJK_CHAR_FRACTION * stats.chars:
        return "cjk"
    if stats.first in ("{", "[") and stats.json_pairs * 40 >= stats.chars:
        return "structured"  # JSON pasted as text
    if stats.code_marks + 4 * stats.indents >= CODE_MARK_DENSITY * stats.chars:
        return "code"
    return "prose"
