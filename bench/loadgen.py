"""Closed-loop HTTP load generator for bench/proxy_overhead.py, run as its own process so that its
CPU is not charged to the proxy under test (it still shares the machine's cores).

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:4000 --key sk-... \
        --size-bytes 32768 --messages 8 --concurrency 4 --duration 8 --warmup 1

Each of `concurrency` workers keeps one keep-alive HTTP/1.1 connection and sends the next
chat completion as soon as the previous answer is read (a raw asyncio client: an HTTP library
would cost more CPU per request than the plugin under test). Bodies are built once, in
`variants` copies that differ in their last message, so nothing upstream sees one body
repeated. Requests that start after the warm-up and finish before the window's end count; the result is
one JSON line: latencies (ms), status counts, the pools named by ``x-dualpool-pool``, the
measured window, all answers (warm-up included) and this process's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dispatch_overhead import _turns, chat_body

PATH = "/v1/chat/completions"
POOL_HEADER = b"x-dualpool-pool"
#: A warm-up that never sees its answers (a broken proxy) still ends.
MAX_EXTRA_WARMUP_SECONDS = 120.0


def build_requests(host: str, key: str, model: str, size_bytes: int, messages: int,
                   max_tokens: int, variants: int) -> list[bytes]:
    """`variants` complete HTTP requests whose bodies differ in a tag in the last message."""
    base = chat_body(_turns("mt_bench_question.jsonl"), size_bytes, messages)
    base["model"], base["max_tokens"] = model, max_tokens
    out = []
    for i in range(variants):
        body = dict(base, messages=[*base["messages"][:-1], dict(
            base["messages"][-1], content=f"[request {i}] " + base["messages"][-1]["content"])])
        payload = json.dumps(body).encode()
        head = (f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
        out.append(head.encode() + payload)
    return out


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    """Read one HTTP/1.1 response (Content-Length or chunked); (status, lower-cased headers)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, headers


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    requests = build_requests(f"{host}:{port}", args.key, args.model, args.size_bytes,
                              args.messages, args.max_tokens, args.variants)
    loop = asyncio.get_running_loop()
    start = loop.time()
    # The window opens once the warm-up time has passed and `warmup_requests` were answered.
    window: dict[str, float] = {"from": float("inf"), "to": float("inf")}
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    pools: Counter[str] = Counter()
    errors: list[str] = []
    answered = 0
    hard_stop = start + args.warmup + args.duration + MAX_EXTRA_WARMUP_SECONDS

    def tick(now: float) -> None:
        if window["from"] == float("inf") and (now - start >= args.warmup
                                               and answered >= args.warmup_requests):
            window["from"], window["to"] = now, now + args.duration

    async def worker(index: int) -> None:
        nonlocal answered
        reader, writer = await asyncio.open_connection(host, port)
        sent = index
        try:
            while loop.time() < min(window["to"], hard_stop):
                begin = loop.time()
                writer.write(requests[sent % len(requests)])
                sent += 1
                try:
                    status, headers = await read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError) as error:
                    errors.append(repr(error))
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                end = loop.time()
                answered += 1
                if begin >= window["from"] and end <= window["to"]:
                    latencies.append((end - begin) * 1000.0)
                    statuses[status] += 1
                    pool = headers.get(POOL_HEADER)
                    if pool is not None:
                        pools[pool.decode()] += 1
                tick(end)
                if headers.get(b"connection", b"").lower() == b"close":
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    cpu_before = time.process_time()
    await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
    return {"latencies_ms": [round(v, 3) for v in latencies], "window_s": args.duration,
            "statuses": {str(k): v for k, v in statuses.items()}, "pools": dict(pools),
            "connection_errors": errors[:5], "connection_error_count": len(errors),
            "answered_total": answered, "loadgen_cpu_s": round(time.process_time() - cpu_before, 3),
            "body_bytes": len(requests[0])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="proxy base URL, e.g. http://127.0.0.1:4000")
    ap.add_argument("--key", required=True, help="bearer token (the proxy's master key)")
    ap.add_argument("--model", default="llama", help="model group in the body")
    ap.add_argument("--size-bytes", type=int, required=True, help="prompt bytes per request")
    ap.add_argument("--messages", type=int, default=2, help="messages per request")
    ap.add_argument("--max-tokens", type=int, default=16, help="max_tokens per request")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    ap.add_argument("--warmup-requests", type=int, default=0,
                    help="answers to see before measuring (at least --warmup seconds anyway)")
    ap.add_argument("--variants", type=int, default=16, help="distinct bodies, sent in turn")
    args = ap.parse_args(argv)
    print(json.dumps(asyncio.run(run(args)), separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
