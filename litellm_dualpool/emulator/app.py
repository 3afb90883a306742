"""The HTTP surface of the emulated vLLM server: OpenAI routes, /health, /metrics, /admin.

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (JSON or SSE streams in
vLLM's chunk format; with ``stream_options.include_usage`` a last chunk with empty ``choices``
carries usage, ``continuous_usage_stats`` adds usage to every chunk), ``GET /v1/models``
(each model card carries ``max_model_len``), ``GET /health``, ``GET /metrics``,
``POST /tokenize`` (vLLM's: chat ``messages`` with ``tools`` and ``add_generation_prompt``, or
a completions ``prompt``; answers ``{count, max_model_len, tokens}``, counted exactly as the
usage of the same request would be), ``GET|POST /admin/faults`` (loopback clients only).

Output length per choice: ``min(max_tokens, natural)`` where ``natural`` is drawn from the
output-length distribution, raised to ``min_tokens``, and unbounded with ``ignore_eos: true``
(vLLM's extra sampling fields). ``finish_reason`` is "length" when max_tokens cut the output,
"stop" otherwise. The text is a cycle of one-token words, so it re-tokenizes to exactly
``completion_tokens``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from litellm_dualpool.emulator.backend import Backend
from litellm_dualpool.emulator.faults import FaultAction, Faults, Refuse
from litellm_dualpool.emulator.metrics import EmulatorMetrics
from litellm_dualpool.emulator.outputs import OutputLengths
from litellm_dualpool.emulator.prompt import PromptCounter, PromptError, RenderedPrompt
from litellm_dualpool.emulator.validation import (
    ApiError,
    check_prompt_chars,
    check_requested_max_tokens,
    model_not_found,
    output_budget,
)

log = logging.getLogger(__name__)

#: Message of vLLM's EngineDeadError, what a client sees when the engine core fails.
ENGINE_ERROR_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."
#: Token chunks sent before the cut when a streaming request is dropped.
DROP_AFTER_CHUNKS = 2
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the server serves. ``served_model_names[0]`` is the name it answers with."""

    served_model_names: tuple[str, ...]
    max_model_len: int
    tokenizer: str
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class _Job:
    """One choice to generate: its index in the response, prompt and output length."""

    index: int
    prompt_tokens: int
    output_tokens: int
    finish_reason: str


class EmulatorState:
    """Everything the routes share; one per app (no module-level state)."""

    def __init__(self, settings: ServerSettings, backend: Backend, faults: Faults,
                 outputs: OutputLengths, on_faults_changed: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.backend = backend
        self.faults = faults
        self.outputs = outputs
        self.counter = PromptCounter(settings.tokenizer)
        _ = self.counter.max_chars_per_token  # computed once per process, before any request
        self.rng = random.Random(settings.seed)
        self.metrics = EmulatorMetrics(settings.served_model_names[0], backend.load)
        self._on_faults_changed = on_faults_changed or (lambda: None)
        self.created = int(time.time())

    def faults_changed(self) -> None:
        self.backend.set_stalled(self.faults.stall)
        self._on_faults_changed()

    @property
    def model(self) -> str:
        return self.settings.served_model_names[0]

    def error(self, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(self.faults.error_format), status_code=err.status)


def build_app(state: EmulatorState) -> Starlette:
    """The ASGI app; ``state.backend`` is started and stopped with the app's lifespan."""

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.backend.start()
        state.backend.set_stalled(state.faults.stall)
        try:
            yield
        finally:
            await state.backend.stop()

    routes = [
        Route("/v1/chat/completions", _guarded(state, _chat), methods=["POST"]),
        Route("/v1/completions", _guarded(state, _completions), methods=["POST"]),
        Route("/v1/models", _refusable(state, _models), methods=["GET"]),
        Route("/tokenize", _refusable(state, _tokenize), methods=["POST"]),
        Route("/health", _refusable(state, _health), methods=["GET"]),
        Route("/metrics", _refusable(state, _metrics), methods=["GET"]),
        Route("/admin/faults", _admin(state), methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes, lifespan=asynccontextmanager(lifespan))


Handler = Callable[[EmulatorState, Request], Awaitable[Response]]


def _refused(state: EmulatorState) -> Response | None:
    if state.faults.refuse is Refuse.NONE:
        return None
    err = ApiError(503, "ServiceUnavailableError", "Service Unavailable (emulated refusal)")
    return state.error(err)


def _refusable(state: EmulatorState, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return _refused(state) or await handler(state, request)

    return endpoint


def _guarded(state: EmulatorState, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Refusal, added latency and the per-request fault draw, then the real handler."""

    async def endpoint(request: Request) -> Response:
        refused = _refused(state)
        if refused is not None:
            return refused
        faults = state.faults
        if faults.latency_seconds > 0:
            await asyncio.sleep(faults.latency_seconds)
        action = faults.draw(state.rng)
        if action is FaultAction.HANG:
            return _Hang()
        if action is FaultAction.ERROR:
            return state.error(ApiError(500, "InternalServerError", ENGINE_ERROR_MESSAGE))
        try:
            body = await _json_body(request)
            response = await handler(state, _with_body(request, body))
        except ApiError as err:
            return state.error(err)
        if action is FaultAction.DROP:
            if isinstance(response, _SseStream):
                response.drop_after = DROP_AFTER_CHUNKS
                return response
            return _Drop()
        return response

    return endpoint


def _admin(state: EmulatorState) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        host = request.client.host if request.client else ""
        if host not in LOOPBACK_HOSTS:
            return JSONResponse({"error": "admin is for loopback clients only"}, status_code=403)
        if request.method == "POST":
            try:
                changes = json.loads(await request.body())
                if not isinstance(changes, dict):
                    raise ValueError("body must be a JSON object of fault knobs")
                state.faults.update(changes)
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            state.faults_changed()
        return JSONResponse(state.faults.snapshot())

    return endpoint


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "BadRequestError", f"JSON decode error: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequestError", "Request body must be a JSON object")
    return body


def _with_body(request: Request, body: dict[str, Any]) -> Request:
    request.state.body = body
    return request


# --- routes -----------------------------------------------------------------------------------


async def _health(state: EmulatorState, request: Request) -> Response:
    return Response(status_code=200)


async def _metrics(state: EmulatorState, request: Request) -> Response:
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def _models(state: EmulatorState, request: Request) -> Response:
    cards: list[dict[str, Any]] = [
        {"id": name, "object": "model", "created": state.created, "owned_by": "vllm",
         "root": state.model, "parent": None, "max_model_len": state.settings.max_model_len,
         "permission": []}
        for name in state.settings.served_model_names
    ]
    return JSONResponse({"object": "list", "data": cards})


def _check_model(state: EmulatorState, body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is not None and model not in state.settings.served_model_names:
        raise model_not_found(model, ", ".join(state.settings.served_model_names))


def _int_field(body: dict[str, Any], name: str, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, "BadRequestError", f"{name}: Input should be a valid integer, got {value!r}",
                       name)
    return value


def _plan_jobs(state: EmulatorState, body: dict[str, Any], prompts: list[RenderedPrompt],
               requested: int | None) -> list[_Job]:
    """Validate lengths the way vLLM does and draw each choice's output length."""
    settings, fmt = state.settings, state.faults.error_format
    n = _int_field(body, "n", 1)
    if n is None or n < 1:
        raise ApiError(400, "BadRequestError", f"n must be at least 1, got {n}.", "n")
    min_tokens = _int_field(body, "min_tokens", 0) or 0
    if min_tokens < 0:
        raise ApiError(400, "BadRequestError",
                       f"min_tokens must be greater than or equal to 0, got {min_tokens}.", "min_tokens")
    ignore_eos = body.get("ignore_eos") is True
    jobs = []
    for p_index, prompt in enumerate(prompts):
        if prompt.text is not None:
            check_prompt_chars(settings.max_model_len, state.counter.max_chars_per_token, len(prompt.text), fmt)
        budget = output_budget(settings.max_model_len, prompt.token_count, requested, fmt,
                               token_ids_prompt=prompt.text is None)
        for choice in range(n):
            natural = None if ignore_eos else max(state.outputs.draw(state.rng), min_tokens)
            length = budget if natural is None else min(budget, natural)
            finish = "length" if natural is None or natural >= budget else "stop"
            jobs.append(_Job(p_index * n + choice, prompt.token_count, length, finish))
    return jobs


async def _tokenize(state: EmulatorState, request: Request) -> Response:
    """vLLM's ``POST /tokenize`` (vllm/entrypoints/serve/tokenize): the prompt a chat or
    completions request would have, counted the same way as its usage. Faults:
    ``tokenize_missing`` answers 404 as a server without the route does, and
    ``tokenize_latency_seconds`` delays the answer."""
    faults = state.faults
    if faults.tokenize_missing:
        return JSONResponse({"detail": "Not Found"}, status_code=404)
    if faults.tokenize_latency_seconds > 0:
        await asyncio.sleep(faults.tokenize_latency_seconds)
    try:
        body = await _json_body(request)
        _check_model(state, body)
        if "messages" in body:
            if body.get("add_generation_prompt", True) is not True:
                raise ApiError(400, "BadRequestError",
                               "only add_generation_prompt=true is emulated")
            rendered = state.counter.chat(body)
            text = rendered.text or ""
        elif isinstance(body.get("prompt"), str):
            rendered = state.counter.completion_prompts(body["prompt"])[0]
            text = body["prompt"]
            if body.get("add_special_tokens", True) is False:
                raise ApiError(400, "BadRequestError", "only add_special_tokens=true is emulated")
        else:
            raise ApiError(400, "BadRequestError",
                           "the body needs 'messages' or a string 'prompt'")
    except PromptError as exc:
        return state.error(ApiError(400, "BadRequestError", str(exc)))
    except ApiError as err:
        return state.error(err)
    tokens = state.counter.token_ids(text, add_bos="messages" not in body)
    return JSONResponse({"count": rendered.token_count, "max_model_len":
                         state.settings.max_model_len, "tokens": tokens, "token_strs": None})


async def _chat(state: EmulatorState, request: Request) -> Response:
    body: dict[str, Any] = request.state.body
    _check_model(state, body)
    fmt = state.faults.error_format
    if body.get("max_completion_tokens") is not None:
        param, requested = "max_completion_tokens", _int_field(body, "max_completion_tokens", None)
    else:
        param, requested = "max_tokens", _int_field(body, "max_tokens", None)
    check_requested_max_tokens(state.settings.max_model_len, requested, param, fmt)
    try:
        prompt = state.counter.chat(body)
    except PromptError as exc:
        raise ApiError(400, "BadRequestError", str(exc)) from None
    jobs = _plan_jobs(state, body, [prompt], requested)
    return _respond(state, body, jobs, prompt.token_count, chat=True)


async def _completions(state: EmulatorState, request: Request) -> Response:
    body: dict[str, Any] = request.state.body
    _check_model(state, body)
    requested = _int_field(body, "max_tokens", 16)  # the OpenAI completions default vLLM keeps
    check_requested_max_tokens(state.settings.max_model_len, requested, "max_tokens", state.faults.error_format)
    try:
        prompts = state.counter.completion_prompts(body.get("prompt"))
    except PromptError as exc:
        raise ApiError(400, "BadRequestError", str(exc)) from None
    jobs = _plan_jobs(state, body, prompts, requested)
    return _respond(state, body, jobs, sum(p.token_count for p in prompts), chat=False)


def _respond(state: EmulatorState, body: dict[str, Any], jobs: list[_Job], prompt_tokens: int,
             *, chat: bool) -> Response:
    request_id = f"chatcmpl-{uuid.uuid4().hex}" if chat else f"cmpl-{uuid.uuid4().hex}"
    run = _Run(state, request_id, jobs, prompt_tokens, chat=chat)
    if body.get("stream") is True:
        found = body.get("stream_options")
        options: dict[str, Any] = found if isinstance(found, dict) else {}
        return _SseStream(run, include_usage=options.get("include_usage") is True,
                          continuous_usage=options.get("continuous_usage_stats") is True)
    return _Complete(run)


# --- generation -------------------------------------------------------------------------------


class _Run:
    """The generation of one request's choices, shared by the JSON and the SSE answers."""

    def __init__(self, state: EmulatorState, request_id: str, jobs: list[_Job], prompt_tokens: int,
                 *, chat: bool) -> None:
        self.state = state
        self.request_id = request_id
        self.jobs = jobs
        self.prompt_tokens = prompt_tokens
        self.chat = chat
        self.created = int(time.time())
        self.generated = dict.fromkeys(range(len(jobs)), 0)

    @property
    def completion_tokens(self) -> int:
        return sum(self.generated.values())

    def usage(self, completion_tokens: int | None = None) -> dict[str, Any]:
        done = self.completion_tokens if completion_tokens is None else completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens + done,
                "completion_tokens": done, "prompt_tokens_details": None}

    async def increments(self) -> AsyncIterator[tuple[int, int]]:
        """(job position, new tokens) as the backend produces them, all choices merged."""
        if len(self.jobs) == 1:
            async for inc in self._one(0):
                yield 0, inc
            return
        queue: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()

        async def pump(pos: int) -> None:
            try:
                async for inc in self._one(pos):
                    queue.put_nowait((pos, inc))
            finally:
                queue.put_nowait(None)

        tasks = [asyncio.create_task(pump(pos)) for pos in range(len(self.jobs))]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, pos: int) -> AsyncIterator[int]:
        job = self.jobs[pos]
        start = time.monotonic()
        first: float | None = None
        gen = self.state.backend.generate(job.prompt_tokens, job.output_tokens)
        try:
            async for inc in gen:
                if first is None:
                    first = time.monotonic()
                self.generated[pos] += inc
                yield inc
        finally:
            await gen.aclose()  # type: ignore[attr-defined]  # an async generator, typed as its iterator
        end = time.monotonic()
        scale = self.state.backend.time_scale
        self.state.metrics.request_finished(
            prompt_tokens=job.prompt_tokens, generation_tokens=self.generated[pos],
            finished_reason=job.finish_reason, ttft_seconds=((first or end) - start) * scale,
            e2e_seconds=(end - start) * scale)


async def _watch_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _abort_transport(receive: Receive) -> bool:
    """Reset the client's TCP connection (uvicorn's request cycle holds the transport)."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is None:
        return False
    transport.abort()
    return True


class _Hang(Response):
    """Never answer; return once the client has gone."""

    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _watch_disconnect(receive)


class _Drop(Response):
    """Cut the connection without any response."""

    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _abort_transport(receive):
            raise ConnectionAbortedError("emulated dropped connection")
        await _watch_disconnect(receive)  # let the server see the loss before we return


async def _until_disconnect_or(receive: Receive, work: Awaitable[Any]) -> bool:
    """Run ``work``; False if the client disconnected first (``work`` is then cancelled)."""
    watcher = asyncio.ensure_future(_watch_disconnect(receive))
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({watcher, task}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            return True
        return False
    finally:
        for fut in (watcher, task):
            fut.cancel()
        await asyncio.gather(watcher, task, return_exceptions=True)


class _Complete(Response):
    """The non-streaming answer, sent when every choice has finished."""

    def __init__(self, run: _Run) -> None:
        super().__init__()
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        run = self.run

        async def drain() -> None:
            async for _ in run.increments():
                pass

        if not await _until_disconnect_or(receive, drain()):
            return
        counter = run.state.counter
        choices = []
        for job in run.jobs:
            text = counter.filler(0, run.generated[job.index])
            if run.chat:
                choices.append({"index": job.index,
                                "message": {"role": "assistant", "content": text, "tool_calls": [],
                                            "reasoning_content": None},
                                "logprobs": None, "finish_reason": job.finish_reason, "stop_reason": None})
            else:
                choices.append({"index": job.index, "text": text, "logprobs": None,
                                "finish_reason": job.finish_reason, "stop_reason": None})
        payload: dict[str, Any] = {
            "id": run.request_id, "object": "chat.completion" if run.chat else "text_completion",
            "created": run.created, "model": run.state.model, "choices": choices,
        }
        if not run.state.faults.no_usage:
            payload["usage"] = run.usage()
        await JSONResponse(payload)(scope, receive, send)


class _SseStream(Response):
    """The streaming answer: one chunk per token, vLLM's chunk shapes, then ``[DONE]``."""

    def __init__(self, run: _Run, *, include_usage: bool, continuous_usage: bool) -> None:
        super().__init__()
        self.run = run
        self.include_usage = include_usage
        self.continuous_usage = continuous_usage
        self.drop_after: int | None = None
        self.emitted_tokens = 0

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        run = self.run
        payload: dict[str, Any] = {
            "id": run.request_id, "object": "chat.completion.chunk" if run.chat else "text_completion",
            "created": run.created, "model": run.state.model, "choices": choices,
        }
        if usage is not None:
            payload["usage"] = usage
        elif self.continuous_usage and self.include_usage and not run.state.faults.no_usage:
            payload["usage"] = run.usage(self.emitted_tokens)
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    def _token_choice(self, job: _Job, text: str, last: bool) -> dict[str, Any]:
        finish = job.finish_reason if last else None
        if self.run.chat:
            return {"index": job.index, "delta": {"content": text}, "logprobs": None, "finish_reason": finish}
        return {"index": job.index, "text": text, "logprobs": None, "finish_reason": finish,
                "stop_reason": None}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                (b"cache-control", b"no-cache")]})
        sent = 0

        async def emit(data: bytes) -> None:
            nonlocal sent
            await send({"type": "http.response.body", "body": data, "more_body": True})
            sent += 1
            if self.drop_after is not None and sent > self.drop_after:
                raise _Dropped

        async def produce() -> None:
            run = self.run
            if run.chat:
                for job in run.jobs:
                    await emit(self._chunk([{"index": job.index, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}]))
            counter = run.state.counter
            async for pos, inc in run.increments():
                job = run.jobs[pos]
                start = run.generated[pos] - inc
                for k in range(start, start + inc):
                    last = k == job.output_tokens - 1
                    self.emitted_tokens += 1
                    await emit(self._chunk([self._token_choice(job, counter.filler(k, 1), last)]))
            if self.include_usage and not run.state.faults.no_usage:
                await emit(self._chunk([], usage=run.usage()))
            await emit(b"data: [DONE]\n\n")

        try:
            completed = await _until_disconnect_or(receive, produce())
        except _Dropped:
            if not _abort_transport(receive):
                raise ConnectionAbortedError("emulated dropped connection") from None
            await _watch_disconnect(receive)
            return
        if completed:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Dropped(Exception):
    """Raised inside a stream to cut it (the drop fault)."""
