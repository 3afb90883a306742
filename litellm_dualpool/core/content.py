"""The content class of a request, from numbers the shape pass already has and a bounded sample.

Tokenizers compress classes of text very differently (English prose ~4.5 bytes/token, Python
~3.4, CJK 2-4 with 3-byte characters, JSON ~3.9), so each class gets its own calibration key.
The rules are deliberately cheap: they read at most a few KB of text, whatever the body's size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: Han, kana, hangul, CJK punctuation and full-width forms.
_CJK_RE = re.compile("[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef]")
#: Characters far more frequent in source code than in prose.
_CODE_MARKS = "{}();=<>[]_#"
#: Share of CJK characters in the sample above which the request counts as CJK.
CJK_CHAR_FRACTION = 0.15
#: Code marks (plus indented line starts) per character above which the sample counts as code.
CODE_MARK_DENSITY = 0.035
#: Structured (JSON) bytes above this share of all bytes make the request "structured".
STRUCTURED_BYTE_FRACTION = 0.5


def classify_sample(sample: Sequence[str], text_bytes: int, text_chars: int,
                    structured_bytes: int) -> str:
    """One of "prose", "code", "cjk", "structured" (the values of shape.ContentClass)."""
    total = text_bytes + structured_bytes
    if total and structured_bytes >= STRUCTURED_BYTE_FRACTION * total:
        return "structured"
    if not sample:
        return "prose"
    chars = sum(len(s) for s in sample)
    if text_bytes > text_chars:  # some multi-byte characters: look for CJK in the sample
        cjk = sum(len(_CJK_RE.findall(s)) for s in sample)
        if cjk >= CJK_CHAR_FRACTION * chars:
            return "cjk"
    first = sample[0].lstrip()[:1]
    if first in ("{", "[") and sum(s.count('":') for s in sample) * 40 >= chars:
        return "structured"  # JSON pasted as text
    marks = 0
    for s in sample:
        marks += sum(s.count(ch) for ch in _CODE_MARKS)
        marks += 2 * s.count("\n    ") + 2 * s.count("\n\t")
    if marks >= CODE_MARK_DENSITY * chars:
        return "code"
    return "prose"
