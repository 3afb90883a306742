"""Request bodies of a given token length, written from the offline corpus (:mod:`corpus`).

``Synthesizer.body(spec, model)`` returns an OpenAI chat-completions body whose prompt, counted
as the backend counts it (after the model's chat template: :func:`tokenize.count_prompt_tokens`,
what the emulated vLLM server reports), is within a few tokens of ``spec.prompt_tokens``:

- code: a completion request around a slice of stdlib source;
- prose: a one- to three-turn conversation over licence and documentation paragraphs;
- cjk: a summarisation request in Chinese over Chinese/Japanese/Korean passages;
- tools: tool definitions built from stdlib functions, an assistant tool call and a JSON tool
  result (the shape of agent traffic), then the user's follow-up;
- log: a prose question (longer than the plugin's 1 KB classification sample) followed by a
  pasted CSV access log in the Azure trace's own format, its rows drawn from the committed
  Azure length table.
Texts are deterministic for a given seed and request index.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

import quicktok

from litellm_dualpool.demo import corpus
from litellm_dualpool.demo.lengths import azure_tables
from litellm_dualpool.demo.workload import Category, RequestSpec
from litellm_dualpool.tokenize import count_prompt_tokens

#: Llama-3 chat template: <|start_header_id|>role<|end_header_id|>\n\n ... <|eot_id|>
TOKENS_PER_MESSAGE = 5
#: <|begin_of_text|> plus the assistant header that opens the reply
TOKENS_PER_PROMPT = 5
#: tool definitions take at most this share of a tools request; the tool result takes the rest
TOOLS_DEFINITION_SHARE = 0.5
#: tokens one tool definition takes, roughly (sets how many definitions a request carries)
TOKENS_PER_TOOL_GUESS = 90
#: a small tools request uses functions with a summary this short (keeps small requests small)
SMALL_TOOL_SUMMARY_CHARS = 80
#: requests wanting at most this many definitions draw them from the short ones
SMALL_TOOLS_COUNT = 3
#: the prose part of a pasted-log request: this share of it, at least LOG_MIN_PROSE_TOKENS
LOG_PROSE_SHARE = 0.2
LOG_MIN_PROSE_TOKENS = 400
LOG_HEADER = ("\n\nHere is the access log of our gateway (timestamp, context tokens, generated "
              "tokens). Which requests would not fit a model with an 8K context window?\n\n"
              "TIMESTAMP,ContextTokens,GeneratedTokens\n")

SYSTEM_PROMPTS: Mapping[Category, str] = {
    Category.CODE: "You are a code completion engine. Continue the code exactly where it stops.",
    Category.PROSE: "You are a helpful assistant. Answer precisely and cite the text you were given.",
    Category.CJK: "你是一个乐于助人的助手，请用简洁的中文回答。",
    Category.TOOLS: "You are an agent. Call the tools you are given when they help; answer in JSON.",
    Category.LOG: "You are a helpful assistant. Answer precisely and cite the text you were given.",
}
USER_PREFIX: Mapping[Category, str] = {
    Category.CODE: "Complete the following Python module:\n\n",
    Category.PROSE: "Read this and tell me what it requires of me:\n\n",
    Category.CJK: "请阅读下面的文字并总结要点：\n\n",
    Category.TOOLS: "Find the standard library function that fits my task and show how to call it.",
    Category.LOG: "",
}


class Synthesizer:
    """Writes request bodies for workload specs from real offline text."""

    def __init__(self, encoding: str = "llama3", *, seed: int = 7) -> None:
        self.encoding = encoding
        self.tokenizer = quicktok.get_encoding(encoding)
        self.seed = seed
        self.pools = {
            Category.CODE: corpus.TextPool(corpus.code_pieces(), self.tokenizer),
            Category.PROSE: corpus.TextPool(corpus.prose_pieces(), self.tokenizer),
            Category.CJK: corpus.TextPool(corpus.cjk_pieces(), self.tokenizer),
        }
        self.functions = corpus.function_docs()
        self.small_functions = [f for f in self.functions
                                if len(f.summary) <= SMALL_TOOL_SUMMARY_CHARS and len(f.parameters) <= 2]
        if not self.small_functions:
            raise ValueError("no stdlib function small enough to define a minimal tool")

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode_ordinary(text))

    def count_prompt(self, body: Mapping[str, Any]) -> int:
        """Exact prompt tokens after the model's chat template (what the backend reports)."""
        return count_prompt_tokens(body, self.encoding)

    def body(self, spec: RequestSpec, model: str) -> dict[str, Any]:
        rng = random.Random(self.seed * 1_000_003 + spec.index)
        if spec.category is Category.TOOLS:
            messages, tools = self._tools_request(spec.prompt_tokens, rng)
        elif spec.category is Category.LOG:
            messages, tools = self._log_request(spec.prompt_tokens, rng), None
        else:
            messages, tools = self._text_request(spec.category, spec.prompt_tokens, rng), None
        body: dict[str, Any] = {"model": model, "messages": messages,
                                "max_tokens": spec.max_tokens, "stream": spec.stream}
        if tools:
            body["tools"] = tools
        if spec.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    # -- plain text categories -----------------------------------------------------------------

    def _text_request(self, category: Category, target: int,
                      rng: random.Random) -> list[dict[str, Any]]:
        pool = self.pools[category]
        system = {"role": "system", "content": SYSTEM_PROMPTS[category]}
        prefix = USER_PREFIX[category]
        turns = 1
        if category is Category.PROSE and target > 600:
            turns = rng.choice((1, 2, 3))
        fixed = (TOKENS_PER_PROMPT + TOKENS_PER_MESSAGE + self.count(system["content"])
                 + self.count(prefix) + (2 * turns - 1) * TOKENS_PER_MESSAGE)
        budget = max(1, target - fixed)
        if target < fixed + 8:  # tiny prompts: no system message, just the text
            return [{"role": "user", "content": pool.text(max(1, target - 2 * TOKENS_PER_MESSAGE),
                                                          rng)}]
        shares = [budget // turns] * turns
        shares[-1] += budget - sum(shares)
        messages: list[dict[str, Any]] = [system]
        for share in shares[:-1]:  # earlier turns: the user's text, half of it echoed back
            text = pool.text(share, rng)
            cut = len(text) // 2
            messages.append({"role": "user", "content": text[:cut]})
            messages.append({"role": "assistant", "content": text[cut:]})
        messages.append({"role": "user", "content": prefix + pool.text(shares[-1], rng)})
        return messages

    # -- pasted log -------------------------------------------------------------------------

    def _log_request(self, target: int, rng: random.Random) -> list[dict[str, Any]]:
        system = {"role": "system", "content": SYSTEM_PROMPTS[Category.LOG]}
        prose_tokens = max(LOG_MIN_PROSE_TOKENS, round(target * LOG_PROSE_SHARE))
        user = {"role": "user", "content": self.pools[Category.PROSE].text(prose_tokens, rng)
                + LOG_HEADER}
        messages = [system, user]
        budget = target - self.count_prompt({"messages": messages})
        rows: list[str] = []
        stamp = 0.0
        table = azure_tables()["conv" if rng.random() < 0.7 else "code"]
        while budget > 0:
            stamp += rng.expovariate(5.0)
            context, generated = table.sample(rng)
            minute, second = divmod(stamp, 60.0)
            row = f"2023-11-16 18:{int(minute) % 60:02d}:{second:010.7f},{context},{generated}\n"
            rows.append(row)
            budget -= self.count(row)
        user["content"] += "".join(rows)
        while len(rows) > 1 and self.count_prompt({"messages": messages}) > target:
            user["content"] = user["content"][: -len(rows.pop())]
        return messages

    # -- tool calling --------------------------------------------------------------------------

    def _tool(self, doc: corpus.FunctionDoc) -> dict[str, Any]:
        properties = {
            name: {"type": "string", "description": f"The {name} argument of {doc.module}.{doc.name}."}
            for name in doc.parameters
        }
        return {"type": "function", "function": {
            "name": doc.tool_name, "description": doc.summary,
            "parameters": {"type": "object", "properties": properties,
                           "required": list(doc.required)}}}

    def _tools_request(self, target: int,
                       rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Definitions take about half the target, the tool's JSON result the rest. Counted
        exactly (the model's template renders definitions as indented JSON, which costs more
        tokens than the request's compact JSON), then corrected once."""
        wanted = max(1, min(len(self.functions),
                            round(target * TOOLS_DEFINITION_SHARE / TOKENS_PER_TOOL_GUESS)))
        # small requests carry short definitions, so they can stay small
        candidates = self.small_functions if wanted <= SMALL_TOOLS_COUNT else self.functions
        docs = rng.sample(candidates, min(wanted, len(candidates)))
        called = docs[0]
        arguments = json.dumps({name: f"<{name}>" for name in called.required or called.parameters})
        call_id = f"call_{rng.randrange(16**8):08x}"
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPTS[Category.TOOLS]},
            {"role": "user", "content": USER_PREFIX[Category.TOOLS]},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": call_id, "type": "function",
                "function": {"name": called.tool_name, "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": call_id, "content": "{}"},
            {"role": "user", "content": "Which one should I use, and with which arguments?"},
        ]
        tools = [self._tool(doc) for doc in docs]
        base = self.count_prompt({"messages": messages, "tools": tools})
        while base > target * (1 - TOOLS_DEFINITION_SHARE / 2) and len(tools) > 1:
            per_tool = max(1.0, base / len(tools))
            drop = max(1, min(len(tools) - 1, round((base - target / 2) / per_tool)))
            del tools[-drop:]
            base = self.count_prompt({"messages": messages, "tools": tools})
        budget = target - base
        for _ in range(2):  # the result's framing inside the template is not additive exactly
            messages[3]["content"] = self._tool_result(budget, rng)
            excess = self.count_prompt({"messages": messages, "tools": tools}) - target
            if abs(excess) <= max(2, target // 200):
                break
            budget -= excess
        return messages, tools

    def _tool_result(self, budget: int, rng: random.Random) -> str:
        """A JSON search result of about ``budget`` tokens: matching functions and their docs."""
        if budget <= 2:
            return "{}"
        records: list[dict[str, str]] = []
        used = self.count('{"matches":[]}')
        prose = self.pools[Category.PROSE]
        while used < budget:
            doc = rng.choice(self.functions)
            record = {"function": f"{doc.module}.{doc.name}",
                      "signature": f"{doc.name}({', '.join(doc.parameters)})",
                      "summary": doc.summary}
            cost = self.count(json.dumps(record)) + 1
            if used + cost > budget:
                # last record: fill the remainder with a note of the right length
                room = budget - used - self.count(json.dumps({"note": ""})) - 1
                if room > 0:
                    records.append({"note": prose.text(room, rng)})
                break
            records.append(record)
            used += cost
        return json.dumps({"matches": records})
