"""One pass over an OpenAI-style request body: how many bytes of what kind it carries.

`shape_request` is the only entry point. It walks chat `messages` (OpenAI's and Anthropic's, with
Anthropic's top-level `system` and its `tool_use` / `tool_result` / `thinking` blocks), legacy
completions `prompt`, Responses-API `input`/`instructions` and embeddings `input` once, together
with `tools`, `functions` and `response_format`, and measures UTF-8 bytes without encoding large strings:
an ASCII string's UTF-8 length is its `len` (checked with `str.isascii`, which copies nothing);
only non-ASCII strings are encoded, in bounded chunks, so a 10 MB prompt never allocates another
10 MB. The walk keeps references to the strings it meets; afterwards the content class and
the character counts (`core.content`) are read from a bounded, evenly spread sample of them.
Field paths for errors are only formatted when an error is raised (a chat message of the
common `{"role": str, "content": str}` form takes a fast path).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from litellm_dualpool.core.content import (
    CJK_CHAR_FRACTION,
    STRUCTURED_BYTE_FRACTION,
    ZERO_COUNTS,
    CharCounts,
    classify,
    measure_strings,
)
from litellm_dualpool.errors import InvalidRequestError


class ContentClass(StrEnum):
    """A cheap content class read from the bytes already scanned; tokenizers differ by class."""

    PROSE = "prose"
    CODE = "code"
    CJK = "cjk"
    STRUCTURED = "structured"


@dataclass(frozen=True, slots=True)
class RequestShape:
    """What a request carries, measured without a tokenizer.

    text_bytes: UTF-8 bytes of free text (message contents, prompts, inputs).
    structured_bytes: UTF-8 bytes of JSON-like payloads (tool/function definitions, tool-call
        arguments, response_format schemas), measured as compact-ish JSON (", " and ": ").
    message_count: chat messages (each adds template framing tokens); 1 for a plain prompt
        (the number of prompts for a batched completions/embeddings request).
    tool_count: tool/function definitions plus tool calls (each adds framing tokens).
    image_count / audio_count: media parts (charged a fixed token cost, never learned from).
    exact_prompt_tokens: set when the prompt is given as token ids (an exact count).
    content_class: the dominant class of the text.
    file_count: file / document parts (charged like images; never learned from).
    chat_template: True when a chat template frames the text (messages, Responses input);
        False for raw completions prompts and embeddings inputs.
    has_tools: the request defines tools/functions (templates add a fixed tool preamble).
    char_counts: estimated character counts of all strings (None when unknown, e.g. a shape
        rebuilt from a log line; the calibrator then assumes the key's usual mix).
    """

    text_bytes: int
    structured_bytes: int
    message_count: int
    tool_count: int
    image_count: int
    audio_count: int
    exact_prompt_tokens: int | None
    content_class: ContentClass
    file_count: int = 0
    chat_template: bool = True
    has_tools: bool = False
    char_counts: CharCounts | None = None
    #: characters of the free text (its UTF-8 bytes beyond them tell multi-byte text without
    #: looking at it: `bytes_content_class`); None when unknown (a shape rebuilt from a log)
    text_chars: int | None = field(default=None, compare=False)

    @property
    def total_bytes(self) -> int:
        return self.text_bytes + self.structured_bytes

    @property
    def media_count(self) -> int:
        return self.image_count + self.audio_count + self.file_count


#: Non-ASCII strings longer than this are encoded chunk by chunk (bounded extra memory).
_ENCODE_CHUNK_CHARS = 1 << 16
#: Characters of structured strings (JSON leaves, tool arguments) sampled for char counts.
_STRUCTURED_SAMPLE_CHARS = 2048
#: Nesting deeper than this in a JSON payload is rejected (protects the recursion).
_MAX_JSON_DEPTH = 64

_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text", "refusal", "summary_text",
                              "reasoning_text"})
_IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})
_AUDIO_PART_TYPES = frozenset({"input_audio", "audio"})
_FILE_PART_TYPES = frozenset({"file", "input_file", "document"})
_TOOL_USE_PART_TYPES = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
_TOOL_RESULT_PART_TYPES = frozenset({"tool_result", "mcp_tool_result"})


def utf8_len(text: str) -> int:
    """UTF-8 byte length of `text` without a full copy (lone surrogates count 3 bytes)."""
    if text.isascii():  # O(1): CPython keeps an "ascii" flag on every str
        return len(text)
    n = len(text)
    if n <= _ENCODE_CHUNK_CHARS:
        return len(text.encode("utf-8", "surrogatepass"))
    total = 0
    for start in range(0, n, _ENCODE_CHUNK_CHARS):
        total += len(text[start : start + _ENCODE_CHUNK_CHARS].encode("utf-8", "surrogatepass"))
    return total


class _Walker:
    """Accumulates one body's measurements; one instance per call (not shared)."""

    __slots__ = ("audio", "files", "has_tools", "images", "messages", "struct_chars",
                 "struct_str_bytes", "struct_strings", "structured", "syntax_digits",
                 "syntax_punct", "syntax_spaces", "text", "text_chars", "text_strings",
                 "token_ids", "tools")

    def __init__(self) -> None:
        self.text = 0
        self.text_chars = 0
        self.text_strings: list[str] = []
        self.structured = 0
        self.struct_chars = 0
        self.struct_str_bytes = 0
        self.struct_strings: list[str] = []
        self.syntax_punct = 0
        self.syntax_spaces = 0
        self.syntax_digits = 0
        self.messages = 0
        self.tools = 0
        self.images = 0
        self.audio = 0
        self.files = 0
        self.token_ids: int | None = None
        self.has_tools = False

    # -- leaves -------------------------------------------------------------------------
    def add_text(self, value: object, field: str) -> None:
        if not isinstance(value, str):
            raise InvalidRequestError(f"expected a string, got {type(value).__name__}", field=field)
        self.text += len(value) if value.isascii() else utf8_len(value)
        self.text_chars += len(value)
        self.text_strings.append(value)

    def add_optional_text(self, value: object, field: str) -> None:
        if value is not None:
            self.add_text(value, field)

    def add_structured_text(self, value: object, field: str) -> None:
        if not isinstance(value, str):
            raise InvalidRequestError(f"expected a string, got {type(value).__name__}", field=field)
        size = utf8_len(value)
        self.structured += size
        self.struct_str_bytes += size
        self.struct_chars += len(value)
        self.struct_strings.append(value)

    def add_json(self, value: object, field: str) -> None:
        self.structured += self.json(value, field, 0)

    def json(self, value: object, field: str, depth: int) -> int:
        """Size of `value` as `json.dumps` writes it (", " / ": " separators, escapes not
        counted); remembers its strings and syntax characters for the character counts."""
        if depth > _MAX_JSON_DEPTH:
            raise InvalidRequestError("JSON nested too deeply", field=field)
        if isinstance(value, str):
            size = utf8_len(value)
            self.struct_str_bytes += size
            self.struct_chars += len(value)
            self.struct_strings.append(value)
            self.syntax_punct += 2
            return size + 2
        if value is None or value is True:
            return 4
        if value is False:
            return 5
        if isinstance(value, int | float):
            size = len(repr(value))
            self.syntax_digits += size
            return size
        if isinstance(value, Mapping):
            n = len(value)
            seps = max(n - 1, 0)
            size = 2 + 2 * seps
            self.syntax_punct += 2 + seps + 3 * n  # braces, commas, quotes + colon per key
            self.syntax_spaces += seps + n
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidRequestError("JSON object keys must be strings", field=field)
                key_size = utf8_len(key)
                self.struct_str_bytes += key_size
                self.struct_chars += len(key)
                self.struct_strings.append(key)
                size += key_size + 4 + self.json(item, f"{field}.{key}", depth + 1)
            return size
        if isinstance(value, list | tuple):
            seps = max(len(value) - 1, 0)
            size = 2 + 2 * seps
            self.syntax_punct += 2 + seps
            self.syntax_spaces += seps
            for i, item in enumerate(value):
                size += self.json(item, f"{field}[{i}]", depth + 1)
            return size
        raise InvalidRequestError(f"not a JSON value: {type(value).__name__}", field=field)

    def add_token_ids(self, ids: Sequence[object], field: str) -> None:
        for i, tok in enumerate(ids):
            if type(tok) is not int or tok < 0:
                raise InvalidRequestError("token ids must be non-negative integers",
                                          field=f"{field}[{i}]")
        self.token_ids = (self.token_ids or 0) + len(ids)

    def char_counts(self) -> tuple[CharCounts, str]:
        """(estimated counts over all strings, content class) from bounded samples."""
        text_stats = (measure_strings(self.text_strings, self.text_chars)
                      if self.text_chars else None)
        counts = ZERO_COUNTS
        if text_stats is not None:
            counts = text_stats.scaled(self.text_chars, self.text - self.text_chars)
        if self.struct_chars:
            struct_stats = measure_strings(self.struct_strings, self.struct_chars,
                                           _STRUCTURED_SAMPLE_CHARS)
            counts = counts + struct_stats.scaled(self.struct_chars,
                                                  self.struct_str_bytes - self.struct_chars)
        if self.syntax_punct or self.syntax_spaces or self.syntax_digits:
            counts = counts + CharCounts(self.syntax_spaces, 0, self.syntax_digits,
                                         self.syntax_punct, 0, 0)
        return counts, classify(text_stats, self.text, self.structured,
                                self.has_tools or self.tools > 0)

    # -- chat ---------------------------------------------------------------------------
    def content(self, content: object, field: str) -> None:
        if content is None or isinstance(content, str):
            self.add_optional_text(content, field)
            return
        if not isinstance(content, list):
            raise InvalidRequestError(
                f"content must be a string or a list of parts, got {type(content).__name__}",
                field=field)
        for i, part in enumerate(content):
            self.part(part, f"{field}[{i}]")

    def part(self, part: object, field: str) -> None:
        if isinstance(part, str):  # Responses/legacy clients sometimes send bare strings
            self.add_text(part, field)
            return
        if not isinstance(part, Mapping):
            raise InvalidRequestError("a content part must be an object", field=field)
        kind = part.get("type")
        if not isinstance(kind, str):
            raise InvalidRequestError("a content part needs a string 'type'", field=f"{field}.type")
        if kind in _TEXT_PART_TYPES:
            self.add_text(part.get("text", part.get("refusal")), f"{field}.text")
        elif kind in _IMAGE_PART_TYPES:
            self.images += 1
        elif kind in _AUDIO_PART_TYPES:
            self.audio += 1
        elif kind in _FILE_PART_TYPES:
            self.files += 1
        elif kind in _TOOL_USE_PART_TYPES:  # Anthropic: the assistant's call, framed like one
            self.tools += 1
            self.add_structured_text(part.get("name", ""), f"{field}.name")
            self.add_json(part.get("input"), f"{field}.input")
        elif kind in _TOOL_RESULT_PART_TYPES:  # Anthropic: its text and images, as content
            self.tools += 1
            self.content(part.get("content"), f"{field}.content")
        elif kind == "thinking":
            self.add_optional_text(part.get("thinking"), f"{field}.thinking")
        elif kind == "redacted_thinking":  # opaque data: charged as bytes, at most what it costs
            data = part.get("data")
            if data is not None:
                self.add_structured_text(data, f"{field}.data")
        else:  # an unknown part type: charge what it carries as structured bytes
            self.add_json(part, field)

    def message(self, msg: object, field: str) -> None:
        if not isinstance(msg, Mapping):
            raise InvalidRequestError("a message must be an object", field=field)
        role = msg.get("role")
        if not isinstance(role, str):
            raise InvalidRequestError("a message needs a string 'role'", field=f"{field}.role")
        self.messages += 1
        self.content(msg.get("content"), f"{field}.content")
        self.add_optional_text(msg.get("name"), f"{field}.name")
        reasoning = msg.get("reasoning_content")
        if reasoning is not None:
            self.add_text(reasoning, f"{field}.reasoning_content")
        tool_calls = msg.get("tool_calls")
        if tool_calls is not None:
            if not isinstance(tool_calls, list):
                raise InvalidRequestError("tool_calls must be a list", field=f"{field}.tool_calls")
            for i, call in enumerate(tool_calls):
                self.tool_call(call, f"{field}.tool_calls[{i}]")
        function_call = msg.get("function_call")  # legacy functions API
        if function_call is not None:
            self.function(function_call, f"{field}.function_call")

    def tool_call(self, call: object, field: str) -> None:
        if not isinstance(call, Mapping):
            raise InvalidRequestError("a tool call must be an object", field=field)
        self.function(call.get("function"), f"{field}.function")

    def function(self, fn: object, field: str) -> None:
        if not isinstance(fn, Mapping):
            raise InvalidRequestError("a function call must be an object", field=field)
        self.tools += 1
        self.add_structured_text(fn.get("name", ""), f"{field}.name")
        args = fn.get("arguments", "")
        if isinstance(args, str):
            self.add_structured_text(args, f"{field}.arguments")
        else:  # some clients send arguments as an object
            self.add_json(args, f"{field}.arguments")

    def messages_list(self, messages: object, field: str) -> None:
        if not isinstance(messages, list):
            raise InvalidRequestError("messages must be a list", field=field)
        if not messages:
            raise InvalidRequestError("messages must not be empty", field=field)
        strings = self.text_strings
        for i, msg in enumerate(messages):
            if type(msg) is dict and len(msg) == 2:  # fast path: {"role": str, "content": str}
                content = msg.get("content")
                if type(content) is str and type(msg.get("role")) is str:
                    self.messages += 1
                    self.text += len(content) if content.isascii() else utf8_len(content)
                    self.text_chars += len(content)
                    strings.append(content)
                    continue
            self.message(msg, f"{field}[{i}]")

    # -- completions / embeddings / Responses --------------------------------------------
    def prompt(self, prompt: object, field: str) -> None:
        """Completions `prompt` or embeddings `input`: str, [str], [int], [[int]]."""
        if isinstance(prompt, str):
            self.messages += 1
            self.add_text(prompt, field)
            return
        if not isinstance(prompt, list) or not prompt:
            raise InvalidRequestError(
                "must be a string, a list of strings or a list of token ids", field=field)
        first = prompt[0]
        if type(first) is int:
            self.messages += 1
            self.add_token_ids(prompt, field)
            return
        for i, item in enumerate(prompt):
            self.messages += 1
            if isinstance(item, str):
                self.add_text(item, f"{field}[{i}]")
            elif isinstance(item, list) and item and type(item[0]) is int:
                self.add_token_ids(item, f"{field}[{i}]")
            else:
                raise InvalidRequestError(
                    "each item must be a string or a non-empty list of token ids",
                    field=f"{field}[{i}]")

    def responses_input(self, value: object, field: str) -> None:
        if isinstance(value, str):
            self.messages += 1
            self.add_text(value, field)
            return
        if not isinstance(value, list):
            raise InvalidRequestError("input must be a string or a list of items", field=field)
        for i, item in enumerate(value):
            self.responses_item(item, f"{field}[{i}]")

    def responses_item(self, item: object, field: str) -> None:
        if not isinstance(item, Mapping):
            raise InvalidRequestError("an input item must be an object", field=field)
        kind = item.get("type", "message")
        if kind == "message" or (kind is None and "role" in item):
            self.message(item, field)
        elif kind == "function_call":
            self.messages += 1
            self.function(item, field)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            self.messages += 1
            output = item.get("output")
            if isinstance(output, list):
                self.content(output, f"{field}.output")
            else:
                self.add_text(output, f"{field}.output")
        elif kind == "reasoning":
            self.messages += 1
            self.content(item.get("summary"), f"{field}.summary")
        elif isinstance(kind, str):
            self.messages += 1
            self.add_json(item, field)
        else:
            raise InvalidRequestError("an input item needs a string 'type'", field=f"{field}.type")

    # -- definitions ---------------------------------------------------------------------
    def definitions(self, body: Mapping[str, Any]) -> None:
        for name in ("tools", "functions"):
            defs = body.get(name)
            if defs is None:
                continue
            if not isinstance(defs, list):
                raise InvalidRequestError("must be a list", field=name)
            for i, d in enumerate(defs):
                if not isinstance(d, Mapping):
                    raise InvalidRequestError("a definition must be an object",
                                              field=f"{name}[{i}]")
                self.tools += 1
                self.add_json(d, f"{name}[{i}]")
            if defs:
                self.has_tools = True
        fmt = body.get("response_format")
        if fmt is not None:
            if not isinstance(fmt, Mapping):
                raise InvalidRequestError("response_format must be an object",
                                          field="response_format")
            schema = fmt.get("json_schema")
            if schema is not None:
                self.add_json(schema, "response_format.json_schema")
        text_cfg = body.get("text")  # Responses API: text.format json schema
        if isinstance(text_cfg, Mapping) and isinstance(text_cfg.get("format"), Mapping):
            self.add_json(text_cfg["format"].get("schema"), "text.format.schema")


#: Tokens a chat template may add beyond the text's own, taken generously (Llama-3 adds ~5 per
#: message and a dated system header, Llama-3.1 ~200 tokens of tool instructions, Qwen3 and
#: gpt-oss default system prompts of 20-100 tokens): per request, per message, per tool.
TEMPLATE_TOKENS_PER_REQUEST = 512
TEMPLATE_TOKENS_PER_MESSAGE = 32
TEMPLATE_TOKENS_PER_TOOL = 64
#: Tokens per byte of structured payload at most: templates render JSON with indentation, whose
#: whitespace (not in `structured_bytes`) adds about a token per line.
STRUCTURED_TOKENS_PER_BYTE = 2


def prompt_tokens_upper_bound(shape: RequestShape) -> int | None:
    """The most tokens this prompt can tokenize to, or None when its size does not bound it
    (media: an image's tokens do not follow its bytes).

    Why it holds: the byte-level BPE tokenizers of current models (Llama-3, Qwen, GPT, Mistral
    tekken) never make a token of less than one byte, and SentencePiece's byte fallback does not
    either; what a template adds is bounded by the generous constants above. A backend's count
    above it is not this request's count, and a request whose bound plus its output budget fits
    a window cannot have overflowed it."""
    if shape.media_count:
        return None
    return (shape.text_bytes + STRUCTURED_TOKENS_PER_BYTE * shape.structured_bytes
            + (shape.exact_prompt_tokens or 0) + TEMPLATE_TOKENS_PER_REQUEST
            + TEMPLATE_TOKENS_PER_MESSAGE * shape.message_count
            + TEMPLATE_TOKENS_PER_TOOL * shape.tool_count)


def prompt_tokens_plausible(shape: RequestShape, prompt_tokens: int,
                            max_bytes_per_token: float) -> bool:
    """Whether `prompt_tokens` can be this request's count: at most the upper bound, and at
    least its bytes at `max_bytes_per_token` (the calibration's ceiling on a believable ratio).
    A media request is never plausible here: its count says nothing about its bytes."""
    upper = prompt_tokens_upper_bound(shape)
    if upper is None or not 0 < prompt_tokens <= upper:
        return False
    return prompt_tokens * max_bytes_per_token >= shape.total_bytes


def json_size(value: object, field: str) -> int:
    """UTF-8 size of `value` as `json.dumps` (default separators) writes it, without building it.

    Escapes are not counted (they are rare in schemas); non-JSON values raise InvalidRequestError.
    """
    return _Walker().json(value, field, 0)


def bytes_content_class(text_bytes: int, text_chars: int | None, structured_bytes: int,
                        tools: bool) -> ContentClass:
    """The content class read from sizes alone (no character is looked at): structured by its
    bytes or tools as `content.classify` does; CJK when the text's multi-byte extra bytes reach
    what `CJK_CHAR_FRACTION` of 3-byte characters would add; else prose, which the far tier
    widens to code's ratio too (`core.estimator`)."""
    total = text_bytes + structured_bytes
    if tools or (total and structured_bytes >= STRUCTURED_BYTE_FRACTION * total):
        return ContentClass.STRUCTURED
    chars = text_bytes if text_chars is None else text_chars
    if text_bytes - chars >= 2 * CJK_CHAR_FRACTION * chars > 0:
        return ContentClass.CJK
    return ContentClass.PROSE


def bytes_only(shape: RequestShape) -> RequestShape:
    """A shape as the far tier sees it: no character counts, the class from its sizes (what
    `ShapeDraft.bytes_shape` gives for the body; the simulator's shapes are measured already)."""
    return replace(shape, char_counts=None, content_class=bytes_content_class(
        shape.text_bytes, shape.text_chars, shape.structured_bytes,
        shape.has_tools or shape.tool_count > 0))


class ShapeDraft:
    """A body walked once for its sizes, before any character is counted: `bytes_shape()` is
    what the far tier decides from (sizes and a small class sample), `shape()` the full shape
    with its character counts (the near tier). Either is computed at most once."""

    __slots__ = ("_bytes_class", "_bytes_shape", "_shape", "chat_template", "walker")

    def __init__(self, walker: _Walker, chat_template: bool) -> None:
        self.walker = walker
        self.chat_template = chat_template
        self._shape: RequestShape | None = None
        self._bytes_shape: RequestShape | None = None
        self._bytes_class: ContentClass | None = None

    def _build(self, counts: CharCounts | None, content_class: ContentClass) -> RequestShape:
        w = self.walker
        # positional, in field order (keywords cost ~0.4 us more per request)
        return RequestShape(w.text, w.structured, max(w.messages, 1), w.tools, w.images, w.audio,
                            w.token_ids, content_class, w.files, self.chat_template, w.has_tools,
                            counts, w.text_chars)

    def shape(self) -> RequestShape:
        """The full shape: character counts from the bounded samples (`core.content`)."""
        if self._shape is None:
            counts, content_class = self.walker.char_counts()
            self._shape = self._build(counts, ContentClass(content_class))
        return self._shape

    def bytes_shape(self) -> RequestShape:
        """The shape without character counts (None: the calibrator assumes the key's usual
        mix); its content class read from the sizes (`bytes_content_class`)."""
        if self._bytes_shape is None:
            self._bytes_shape = self._build(None, self.bytes_class())
        return self._bytes_shape

    def bytes_class(self) -> ContentClass:
        """The content class read from the sizes alone (`bytes_content_class`), kept."""
        if self._bytes_class is None:
            w = self.walker
            self._bytes_class = bytes_content_class(w.text, w.text_chars, w.structured,
                                                    w.has_tools or w.tools > 0)
        return self._bytes_class

    @property
    def text_only_bytes(self) -> int | None:
        """The body's UTF-8 bytes when nothing but text sets its count (no media, no token
        ids), else None."""
        w = self.walker
        if w.images or w.audio or w.files or w.token_ids is not None:
            return None
        return w.text + w.structured


def shape_request(body: Mapping[str, Any]) -> RequestShape:
    """Shape chat `messages`, completions `prompt`, Responses `input` or embeddings `input`.

    Raises InvalidRequestError (with the field path) for malformed bodies; never anything else.
    """
    return measure_request(body).shape()


def measure_request(body: Mapping[str, Any]) -> ShapeDraft:
    """Walk a body for its sizes (`shape_request` without the character counts yet).

    Raises InvalidRequestError (with the field path) for malformed bodies; never anything else.
    """
    if not isinstance(body, Mapping):
        raise InvalidRequestError("the request body must be a JSON object", field="body")
    walker = _Walker()
    chat_template = True
    try:
        if "messages" in body:
            walker.messages_list(body["messages"], "messages")
        elif "prompt" in body:
            walker.prompt(body["prompt"], "prompt")
            chat_template = False
        elif "input" in body:
            value = body["input"]
            is_responses = "instructions" in body or (
                isinstance(value, list) and any(isinstance(v, Mapping) for v in value))
            if is_responses:
                walker.responses_input(value, "input")
            else:  # embeddings, or a Responses call with a plain string (framed the same)
                walker.prompt(value, "input")
                chat_template = "max_output_tokens" in body
        else:
            raise InvalidRequestError("the body has none of 'messages', 'prompt' or 'input'",
                                      field="body")
        instructions = body.get("instructions")
        if instructions is not None:
            walker.messages += 1
            walker.add_text(instructions, "instructions")
        system = body.get("system")  # Anthropic Messages: a string or a list of text blocks
        if system is not None:
            walker.messages += 1
            walker.content(system, "system")
        walker.definitions(body)
    except RecursionError:
        raise InvalidRequestError("request nested too deeply", field="body") from None
    return ShapeDraft(walker, chat_template)
