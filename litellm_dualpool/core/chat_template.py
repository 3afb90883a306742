"""The chat templates of Llama-3 and Qwen3, written out as string building, for exact counting.

A backend counts the prompt *after* its chat template: every message is framed by special
tokens and the tool definitions are wrapped in instructions. To compare the estimator with the
truth (bench/estimator_accuracy.py) and to report exact `usage.prompt_tokens` from the emulated
vLLM server (via `litellm_dualpool.tokenize.count_prompt_tokens`), we render the prompt the way
those templates do. Templates:

- "llama3": `<|begin_of_text|>` + per message
  `<|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|>` + the generation prompt
  `<|start_header_id|>assistant<|end_header_id|>\n\n`. With tools, the Llama-3.1 way: a system
  block starting "Environment: ipython", the definitions (JSON, indent 4) in the first user
  message, tool calls as `{"name": ..., "parameters": ...}`, results under role `ipython`.
- "qwen3" (ChatML): `<|im_start|>{role}\n{content}<|im_end|>\n` per message + the generation
  prompt `<|im_start|>assistant\n`; tools in the system block inside `<tools></tools>`, calls
  as `<tool_call>` JSON, consecutive results in one user turn inside `<tool_response>`.

This module builds strings (copies): it is for benchmarks and the emulator, never the routing
hot path. Pure: no tokenizer import here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from litellm_dualpool.errors import InvalidRequestError

TEMPLATES = ("llama3", "qwen3")

_LLAMA_TOOL_INTRO = (
    "Given the following functions, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name '
    'and its value}.Do not use variables.\n\n'
)
_LLAMA_SYSTEM_TOOLS = (
    "Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
)
_QWEN_TOOLS_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_QWEN_TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def content_text(content: Any) -> str:
    """A message's content as the template sees it: text parts joined by newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "\n".join(texts)
    if isinstance(content, Mapping):
        return _tojson(content)
    return str(content)


def _arguments(call: Mapping[str, Any]) -> Any:
    fn = call.get("function", call)
    args = fn.get("arguments", {}) if isinstance(fn, Mapping) else {}
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args
    return args


def _call_name(call: Mapping[str, Any]) -> str:
    fn = call.get("function", call)
    return str(fn.get("name", "")) if isinstance(fn, Mapping) else ""


def to_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Chat messages of a chat body or of a Responses-API body (instructions + input items)."""
    if "messages" in body:
        return [dict(m) for m in body["messages"]]
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    for item in items or []:
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item.get("role", "user"), "content": item.get("content")})
        elif kind == "function_call":
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"function": {"name": item.get("name"), "arguments": item.get("arguments")}}]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "content": item.get("output")})
    return messages


def _tools(body: Mapping[str, Any]) -> list[Any]:
    tools = list(body.get("tools") or [])
    tools += [{"type": "function", "function": f} for f in body.get("functions") or []]
    return tools


def render_llama3(body: Mapping[str, Any], *, add_generation_prompt: bool = True) -> str:
    messages = to_messages(body)
    tools = _tools(body)
    out = ["<|begin_of_text|>"]

    def block(role: str, text: str) -> None:
        out.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{text.strip()}<|eot_id|>")

    if tools:
        system = ""
        if messages and messages[0].get("role") == "system":
            system = content_text(messages.pop(0).get("content"))
        block("system", _LLAMA_SYSTEM_TOOLS + system)
        first_user = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
        if first_user is not None:
            defs = "".join(_tojson(t, indent=4) + "\n\n" for t in tools)
            text = content_text(messages[first_user].get("content"))
            messages[first_user] = {"role": "user", "content": _LLAMA_TOOL_INTRO + defs + text}
    for msg in messages:
        role = msg.get("role", "user")
        if msg.get("tool_calls"):
            calls = "".join(
                '{"name": "' + _call_name(c) + '", "parameters": ' + _tojson(_arguments(c)) + "}"
                for c in msg["tool_calls"])
            out.append(f"<|start_header_id|>assistant<|end_header_id|>\n\n{calls}<|eot_id|>")
        elif role in ("tool", "ipython"):
            block("ipython", content_text(msg.get("content")))
        else:
            block(role, content_text(msg.get("content")))
    if add_generation_prompt:
        out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(out)


def render_qwen3(body: Mapping[str, Any], *, add_generation_prompt: bool = True) -> str:
    messages = to_messages(body)
    tools = _tools(body)
    out: list[str] = []
    if tools:
        out.append("<|im_start|>system\n")
        if messages and messages[0].get("role") == "system":
            out.append(content_text(messages.pop(0).get("content")) + "\n\n")
        out.append(_QWEN_TOOLS_HEAD)
        out.extend("\n" + _tojson(t) for t in tools)
        out.append(_QWEN_TOOLS_TAIL + "<|im_end|>\n")
    for i, msg in enumerate(messages):
        role = msg.get("role", "user")
        text = content_text(msg.get("content"))
        if role == "tool":
            if i == 0 or messages[i - 1].get("role") != "tool":
                out.append("<|im_start|>user")
            out.append(f"\n<tool_response>\n{text}\n</tool_response>")
            if i == len(messages) - 1 or messages[i + 1].get("role") != "tool":
                out.append("<|im_end|>\n")
        elif role == "assistant":
            out.append(f"<|im_start|>assistant\n{text}")
            for j, call in enumerate(msg.get("tool_calls") or []):
                if j or text:
                    out.append("\n")
                args = call.get("function", {}).get("arguments", "")
                args_text = args if isinstance(args, str) else _tojson(args)
                out.append('<tool_call>\n{"name": "' + _call_name(call) + '", "arguments": '
                           + args_text + "}\n</tool_call>")
            out.append("<|im_end|>\n")
        else:
            out.append(f"<|im_start|>{role}\n{text}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def render_prompt(body: Mapping[str, Any], template: str) -> str:
    """The prompt text a backend tokenizes for a chat/Responses body (special tokens inline)."""
    try:
        if template == "llama3":
            return render_llama3(body)
        if template == "qwen3":
            return render_qwen3(body)
    except (AttributeError, TypeError, KeyError) as exc:
        raise InvalidRequestError(f"cannot render the chat template: {exc}", field="messages") \
            from None
    raise InvalidRequestError(f"unknown template {template!r}; known: {TEMPLATES}",
                              field="template")
