"""A small OpenAI-compatible stand-in for one vLLM server, for the plugin's end-to-end tests.

It counts prompt tokens with the real Llama-3 tokenizer (quicktok), enforces max_model_len with
vLLM's own over-length 400 bodies (current and legacy envelopes) or, with ``--error-style``,
SGLang's and TGI's, answers streaming requests with a final usage chunk when asked
(``stream_options.include_usage``), and keeps counters that the tests read back from ``/stats``.
``--no-usage`` makes it a backend that never reports usage.

Like vLLM, it validates the body before anything else: a ``temperature`` that is not a number
gets vLLM's request-validation 400, which quotes the offending value (pydantic's ``input``) in
its message. That is how a client can put any text, a context-length sentence included, into a
backend's error body.

Run: ``python tests/e2e/backend.py --port P --max-model-len 4096 --name short``.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import quicktok
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

#: Chat template framing that Llama-3 adds per message (header tokens + eot) and per prompt.
TOKENS_PER_MESSAGE = 4
TOKENS_PER_PROMPT = 1
COMPLETION_TEXT = "ok"


class Backend:
    def __init__(self, name: str, max_model_len: int, *, report_usage: bool, error_style: str) -> None:
        self.name = name
        self.max_model_len = max_model_len
        self.report_usage = report_usage
        self.error_style = error_style
        self.encoding = quicktok.get_encoding("llama3")
        self.stats: dict[str, int] = {"requests": 0, "served": 0, "rejected": 0, "streamed": 0,
                                      "invalid": 0}

    def prompt_tokens(self, body: dict[str, Any]) -> int:
        if "messages" in body:
            total = TOKENS_PER_PROMPT
            for message in body["messages"]:
                content = message.get("content") or ""
                if isinstance(content, list):
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                total += TOKENS_PER_MESSAGE + len(self.encoding.encode(str(content)))
            return total
        prompt = body.get("prompt", "")
        return TOKENS_PER_PROMPT + len(self.encoding.encode(str(prompt)))

    def over_length(self, prompt_tokens: int, max_tokens: int | None) -> JSONResponse | None:
        limit = self.max_model_len
        if self.error_style not in ("current", "legacy"):
            return self._other_engine_over_length(prompt_tokens, max_tokens or 0)
        if max_tokens is not None and max_tokens > limit:
            message = (f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This "
                       f"model's maximum context length is {limit} tokens and your request has "
                       f"{prompt_tokens} input tokens ({max_tokens} > {limit} - {prompt_tokens}).")
            return self._error(message, param="max_tokens")
        requested = prompt_tokens + (max_tokens or 0)
        if prompt_tokens <= limit and requested <= limit:
            return None
        if self.error_style == "legacy":
            message = (f"This model's maximum context length is {limit} tokens. However, you "
                       f"requested {requested} tokens ({prompt_tokens} in the messages, "
                       f"{max_tokens or 0} in the completion). Please reduce the length of the "
                       "messages or completion.")
            return JSONResponse({"object": "error", "message": message, "type": "BadRequestError",
                                 "param": None, "code": 400}, status_code=400)
        if prompt_tokens > limit:
            message = (f"This model's maximum context length is {limit} tokens. However, your "
                       f"prompt contains at least {prompt_tokens} input tokens, which exceeds this "
                       "limit even without any output tokens. Please reduce the length of the "
                       "input messages.")
            return self._error(message, param="input_tokens")
        message = (f"This model's maximum context length is {limit} tokens. However, you requested "
                   f"{max_tokens} output tokens and your prompt contains at least {prompt_tokens} "
                   f"input tokens, for a total of at least {requested} tokens. Please reduce the "
                   "length of the input prompt or the number of requested output tokens.")
        return self._error(message, param="input_tokens")

    def _other_engine_over_length(self, prompt_tokens: int, max_tokens: int) -> JSONResponse | None:
        """SGLang's (current and older) and TGI's rejections, in their own envelopes."""
        limit, requested = self.max_model_len, prompt_tokens + max_tokens
        if requested <= limit:
            return None
        if self.error_style == "tgi":
            message = (f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
                       f"{limit}. Given: {prompt_tokens} `inputs` tokens and {max_tokens} "
                       "`max_new_tokens`")
            return JSONResponse({"error": message, "error_type": "validation"}, status_code=400)
        if self.error_style == "sglang-old" and prompt_tokens >= limit:
            message = (f"The input ({prompt_tokens} tokens) is longer than the model's context "
                       f"length ({limit} tokens).")
        else:
            message = (f"Requested token count exceeds the model's maximum context length of "
                       f"{limit} tokens. You requested a total of {requested} tokens: "
                       f"{prompt_tokens} tokens from the input messages and {max_tokens} tokens "
                       "for the completion. Please reduce the number of tokens in the input "
                       "messages or the completion to fit within the limit.")
        return JSONResponse({"object": "error", "message": message, "type": "BadRequest",
                             "param": None, "code": 400}, status_code=400)

    @staticmethod
    def validation_error(body: dict[str, Any]) -> JSONResponse | None:
        """vLLM's answer to a body its pydantic model refuses (here: a non-number temperature).
        The message lists pydantic's errors, each quoting the offending value (vLLM 0.32 cuts it
        at 200 characters)."""
        value = body.get("temperature")
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            return None
        try:
            float(value)
            return None
        except (TypeError, ValueError):
            pass
        quoted = value[:200] + "...[truncated]" if isinstance(value, str) and len(value) > 200 else value
        error = {"type": "float_parsing", "loc": "body.temperature",
                 "msg": "Input should be a valid number, unable to parse string as a number",
                 "input": quoted}
        return JSONResponse({"error": {"message": f"1 validation error:\n  {error}",
                                       "type": "Bad Request", "param": "body.temperature",
                                       "code": 400}}, status_code=400)

    @staticmethod
    def _error(message: str, *, param: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "BadRequestError",
                                       "param": param, "code": 400}}, status_code=400)

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.stats["requests"] += 1
        invalid = self.validation_error(body)
        if invalid is not None:
            self.stats["invalid"] += 1
            return invalid
        prompt_tokens = self.prompt_tokens(body)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        rejection = self.over_length(prompt_tokens, max_tokens)
        if rejection is not None:
            self.stats["rejected"] += 1
            return rejection
        self.stats["served"] += 1
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 1,
                 "total_tokens": prompt_tokens + 1}
        headers = {"x-backend-name": self.name}
        created = int(time.time())
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        model = body.get("model", "m")
        if body.get("stream"):
            self.stats["streamed"] += 1
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(self._stream(rid, created, model, usage, include_usage),
                                     media_type="text/event-stream", headers=headers)
        payload: dict[str, Any] = {
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": COMPLETION_TEXT}}],
        }
        if self.report_usage:
            payload["usage"] = usage
        return JSONResponse(payload, headers=headers)

    async def _stream(self, rid: str, created: int, model: str, usage: dict[str, int],
                      include_usage: bool):
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
        for delta, finish in (({"role": "assistant", "content": ""}, None),
                              ({"content": COMPLETION_TEXT}, None), ({}, "stop")):
            chunk = dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": finish}])
            yield f"data: {json.dumps(chunk)}\n\n"
        if include_usage and self.report_usage:
            yield f"data: {json.dumps(dict(base, choices=[], usage=usage))}\n\n"
        yield "data: [DONE]\n\n"

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": "m", "object": "model", "max_model_len": self.max_model_len}]})

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def get_stats(self, request: Request) -> Response:
        return JSONResponse(dict(self.stats, name=self.name, max_model_len=self.max_model_len))

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/models", self.models), Route("/health", self.health),
            Route("/stats", self.get_stats),
        ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-model-len", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--no-usage", action="store_true")
    parser.add_argument("--error-style", default="current",
                        choices=["current", "legacy", "sglang", "sglang-old", "tgi"])
    args = parser.parse_args()
    backend = Backend(args.name, args.max_model_len, report_usage=not args.no_usage,
                      error_style=args.error_style)
    uvicorn.run(backend.app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
