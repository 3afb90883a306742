"""Real text available offline, cut to an exact number of tokens.

Four sources, all found on the machine running the demo (nothing is downloaded):

- code: the Python standard library's own source files (``sysconfig`` stdlib path);
- prose: licence texts and long descriptions of the installed distributions (paragraphs that
  read as prose: mostly letters and spaces), topped up with stdlib docstrings if short;
- cjk: the public-domain passages shipped in :mod:`cjk_passages`, plus CPython's
  ``test/cjkencodings/*-utf8.txt`` sample texts when the interpreter ships them;
- tools: public stdlib functions (name, first docstring paragraph, parameters) used to write
  OpenAI tool definitions and tool results.

Each source is split into pieces at natural boundaries (a file, a paragraph, a passage) and
tokenized once with the target tokenizer. ``TextPool.text(tokens, rng)`` starts at a random
piece, takes consecutive pieces (cycling) and cuts the last one at a token boundary, then
recounts exactly and trims: lengths are exact up to the few tokens that merge across joins.
"""

from __future__ import annotations

import ast
import importlib.metadata
import random
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import quicktok

from litellm_dualpool.demo.cjk_passages import PASSAGES

#: cap on the bytes read per source: enough for the demo's longest request (~100K tokens)
MAX_SOURCE_BYTES = 2_500_000
#: stdlib docstrings top up the prose only when the installed packages give less than this
MIN_PROSE_BYTES = 600_000
#: a paragraph is prose when letters, spaces and common punctuation make up this share of it
PROSE_LETTER_SHARE = 0.9
#: paragraphs shorter than this are headings, badges or fragments, not prose
MIN_PARAGRAPH_CHARS = 160
#: trimming passes after the first cut (joins between pieces may merge a token or two)
TRIM_PASSES = 4
#: skipped stdlib directories: tests carry odd data files, idlelib/tkinter are GUI resources
SKIPPED_STDLIB_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "lib2to3",
                                 "tkinter", "turtledemo", "ensurepip", "pydoc_data"})


def _special_free(text: str) -> bool:
    """Chat-template special tokens look like ``<|...|>``; real text must not contain them."""
    return "<|" not in text


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        path for path in sorted(root.rglob("*.py"))
        if not SKIPPED_STDLIB_DIRS.intersection(path.relative_to(root).parts[:-1])
    ]
    return files


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def code_pieces(max_bytes: int = MAX_SOURCE_BYTES) -> list[str]:
    """Whole stdlib source files, smallest-name first, until ``max_bytes``."""
    pieces: list[str] = []
    total = 0
    for path in _stdlib_files():
        text = _read(path)
        if len(text) < 400 or not _special_free(text):
            continue
        pieces.append(text)
        total += len(text.encode("utf-8"))
        if total >= max_bytes:
            break
    return pieces


def _is_prose(paragraph: str) -> bool:
    if len(paragraph) < MIN_PARAGRAPH_CHARS or not _special_free(paragraph):
        return False
    plain = sum(ch.isalpha() or ch in " \n,.;:'\"()-" for ch in paragraph)
    return plain / len(paragraph) >= PROSE_LETTER_SHARE


def _paragraphs(text: str) -> Iterator[str]:
    for block in text.replace("\r\n", "\n").split("\n\n"):
        paragraph = " ".join(line.strip() for line in block.splitlines()).strip()
        if _is_prose(paragraph):
            yield paragraph


def _distribution_texts() -> Iterator[str]:
    dists = sorted(importlib.metadata.distributions(),
                   key=lambda d: (d.metadata["Name"] or "").lower())
    for dist in dists:
        description = dist.metadata.get_payload() or dist.metadata.get("Description") or ""  # type: ignore[attr-defined]  # an email.Message at run time
        if description:
            yield str(description)
        for file in dist.files or ():
            name = file.name.upper()
            if "LICEN" in name or "COPYING" in name or "NOTICE" in name:
                try:
                    yield file.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue


def _stdlib_docstrings() -> Iterator[str]:
    for path in _stdlib_files():
        try:
            tree = ast.parse(_read(path))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc


def prose_pieces(max_bytes: int = MAX_SOURCE_BYTES) -> list[str]:
    """Distinct prose paragraphs from installed packages' docs and licences (then docstrings)."""
    seen: set[str] = set()
    pieces: list[str] = []
    total = 0
    for source in (_distribution_texts, _stdlib_docstrings):
        if total >= MIN_PROSE_BYTES:
            break
        for text in source():
            for paragraph in _paragraphs(text):
                if paragraph in seen:
                    continue
                seen.add(paragraph)
                pieces.append(paragraph + "\n\n")
                total += len(paragraph.encode("utf-8"))
                if total >= max_bytes:
                    return pieces
    return pieces


def cjk_pieces() -> list[str]:
    """The shipped passages plus CPython's CJK sample texts when present."""
    pieces = [passage + "\n" for passage in PASSAGES]
    sample_dir = Path(sysconfig.get_paths()["stdlib"]) / "test" / "cjkencodings"
    for path in sorted(sample_dir.glob("*-utf8.txt")):
        text = _read(path).strip()
        if text and text + "\n" not in pieces:
            pieces.append(text + "\n")
    return pieces


@dataclass(frozen=True, slots=True)
class FunctionDoc:
    """A public stdlib function as a tool: qualified name, summary, positional parameters."""

    module: str
    name: str
    summary: str
    parameters: tuple[str, ...]
    required: tuple[str, ...]

    @property
    def tool_name(self) -> str:
        return f"{self.module}_{self.name}".replace(".", "_")[:64]


def function_docs(limit: int = 600) -> list[FunctionDoc]:
    """Public module-level functions with a docstring and at least one parameter."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[FunctionDoc] = []
    for path in _stdlib_files():
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        if module.startswith("_") or "._" in module:
            continue
        try:
            tree = ast.parse(_read(path))
        except SyntaxError:
            continue
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            names = [a.arg for a in node.args.args if a.arg not in ("self", "cls")]
            if not doc or not names or not _special_free(doc):
                continue
            required = names[: len(names) - len(node.args.defaults)]
            summary = " ".join(doc.split("\n\n")[0].split())[:400]
            docs.append(FunctionDoc(module, node.name, summary, tuple(names), tuple(required)))
            if len(docs) >= limit:
                return docs
    return docs


class TextPool:
    """Pieces of one kind of text, tokenized once; cuts texts of an exact token count."""

    def __init__(self, pieces: Sequence[str], tokenizer: quicktok.Tokenizer) -> None:
        if not pieces:
            raise ValueError("a text pool needs at least one piece of text")
        self._tokenizer = tokenizer
        tokens, offsets = tokenizer.encode_batch(list(pieces), 0, False)
        self._tokens: np.ndarray = np.asarray(tokens)
        self._offsets: np.ndarray = np.asarray(offsets)

    @property
    def piece_count(self) -> int:
        return len(self._offsets) - 1

    @cached_property
    def total_tokens(self) -> int:
        return int(self._offsets[-1])

    @cached_property
    def bytes_per_token(self) -> float:
        return len(self._decode(self._tokens).encode("utf-8")) / max(1, self.total_tokens)

    def _decode(self, ids: np.ndarray) -> str:
        text: str = self._tokenizer.decode_bytes(ids.tolist()).decode("utf-8", errors="ignore")
        return text

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode_ordinary(text))

    def _ids_from(self, start_piece: int, tokens: int) -> np.ndarray:
        """``tokens`` ids from consecutive pieces beginning at ``start_piece`` (cycling)."""
        start = int(self._offsets[start_piece])
        chunks = [self._tokens[start:]]
        have = self.total_tokens - start
        while have < tokens:
            chunks.append(self._tokens)
            have += self.total_tokens
        return np.concatenate(chunks)[:tokens]

    def text(self, tokens: int, rng: random.Random) -> str:
        """Real text of exactly ``tokens`` tokens (a few more at most when joins merge)."""
        if tokens <= 0:
            return ""
        ids = self._ids_from(rng.randrange(self.piece_count), tokens)
        keep = tokens
        text = self._decode(ids[:keep])
        for _ in range(TRIM_PASSES):
            excess = self.count(text) - tokens
            if excess <= 0:
                break
            keep -= excess
            text = self._decode(ids[:keep])
        return text
