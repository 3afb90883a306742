"""A small OpenAI-compatible stand-in for one vLLM server, for the plugin's end-to-end tests.

It counts prompt tokens with the real Llama-3 tokenizer (quicktok), enforces max_model_len with
vLLM's own over-length 400 bodies (current and legacy envelopes), answers streaming requests with
a final usage chunk when asked (``stream_options.include_usage``), and keeps counters that the
tests read back from ``/stats``. ``--no-usage`` makes it a backend that never reports usage.

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
        self.stats: dict[str, int] = {"requests": 0, "served": 0, "rejected": 0, "streamed": 0}

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

    @staticmethod
    def _error(message: str, *, param: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "BadRequestError",
                                       "param": param, "code": 400}}, status_code=400)

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.stats["requests"] += 1
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
    parser.add_argument("--error-style", choices=["current", "legacy"], default="current")
    args = parser.parse_args()
    backend = Backend(args.name, args.max_model_len, report_usage=not args.no_usage,
                      error_style=args.error_style)
    uvicorn.run(backend.app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
