"""Closed-loop HTTP load generator for bench/proxy_overhead.py, run as its own process so that its
CPU is not charged to the proxies under test (it still shares the machine's cores).

    .venv/bin/python bench/loadgen.py --targets targets.json --size-bytes 32768 --messages 8 \
        --concurrency 4 --slice 1.0 --cycles 12 --rounds 3

`targets.json`: ``[{"name": "stock", "url": "http://127.0.0.1:4000", "key": "sk-...",
"pids": [123]}, ...]``. The targets take turns: a cycle gives each one slice of `--slice`
seconds in which `concurrency` keep-alive connections send the next chat completion as soon as
the previous answer is read (a raw asyncio client: an HTTP library would cost more CPU per
request than the plugin under test); a request started in a slice is waited for, then the
target gets `--gap` idle seconds to finish its deferred work (logging, learning), which is
charged to its slice. The order is shuffled every cycle (seeded), so every target meets the
same machine noise at a time scale of seconds, behind every other target.
The cycles are split into `--rounds` consecutive groups for the spread across rounds. Bodies
are built once, in `variants` copies that differ in their last message, so nothing upstream
sees one body repeated. Before the first cycle every target answers `--warmup-requests`
unmeasured requests. Per slice: latencies (ms), statuses, the pools named by
``x-dualpool-pool``, duration, and the target's CPU and run-queue wait (from /proc, see
`proc_times`). With `--alternate CYCLES` the targets take turns request by request instead
(concurrency 1, a shuffled order per cycle): latencies by cycle, for paired differences.
Output: one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
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


def proc_times(pids: list[int]) -> tuple[float, float]:
    """(CPU seconds of these processes, all threads, exited ones included: /proc/PID/stat, 10 ms
    ticks; seconds their main thread, the event loop, was runnable but waited for a core:
    /proc/PID/schedstat, ns)."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = wait = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += int(fields[11]) + int(fields[12])  # utime, stime
            wait += int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return cpu / ticks, wait / 1e9


class Target:
    """One proxy: its keep-alive connections and its prepared requests."""

    def __init__(self, spec: dict[str, Any], args: argparse.Namespace) -> None:
        self.name: str = spec["name"]
        self.pids: list[int] = list(spec.get("pids") or [])
        url = urlsplit(spec["url"])
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.requests = build_requests(f"{self.host}:{self.port}", spec["key"], args.model,
                                       args.size_bytes, args.messages, args.max_tokens,
                                       args.variants)
        self.connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = (
            [None] * args.concurrency)
        self.sent = 0
        self.connection_errors = 0

    async def call(self, index: int) -> tuple[int, dict[bytes, bytes]] | None:
        """One request on connection `index` (reconnecting if needed); None on a broken one."""
        conn = self.connections[index]
        if conn is None:
            conn = self.connections[index] = await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        writer.write(self.requests[self.sent % len(self.requests)])
        self.sent += 1
        try:
            status, headers = await read_response(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.connection_errors += 1
            writer.close()
            self.connections[index] = None
            return None
        if headers.get(b"connection", b"").lower() == b"close":
            writer.close()
            self.connections[index] = None
        return status, headers

    async def run_slice(self, seconds: float, gap: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        statuses: Counter[str] = Counter()
        pools: Counter[str] = Counter()
        cpu0, wait0 = proc_times(self.pids)
        start = loop.time()
        deadline = start + seconds

        async def worker(index: int) -> None:
            while loop.time() < deadline:
                begin = loop.time()
                answer = await self.call(index)
                if answer is None:
                    continue
                latencies.append((loop.time() - begin) * 1000.0)
                statuses[str(answer[0])] += 1
                pool = answer[1].get(POOL_HEADER)
                if pool is not None:
                    pools[pool.decode()] += 1

        await asyncio.gather(*(worker(i) for i in range(len(self.connections))))
        duration = loop.time() - start
        # The proxy logs (and the plugin learns) after answering: let that finish inside this
        # slice, so it is charged here and does not slow the next proxy's slice.
        await asyncio.sleep(gap)
        cpu1, wait1 = proc_times(self.pids)
        return {"latencies_ms": [round(v, 3) for v in latencies], "duration_s": round(duration, 4),
                "cpu_s": round(cpu1 - cpu0, 3), "wait_s": round(wait1 - wait0, 6),
                "statuses": dict(statuses), "pools": dict(pools)}

    async def warm(self, requests: int) -> None:
        per_connection = max(1, -(-requests // len(self.connections)))

        async def worker(index: int) -> None:
            for _ in range(per_connection):
                await self.call(index)

        await asyncio.gather(*(worker(i) for i in range(len(self.connections))))

    def close(self) -> None:
        for conn in self.connections:
            if conn is not None:
                conn[1].close()


async def alternate(targets: list[Target], cycles: int, gap: float) -> dict[str, Any]:
    """One request at a time, to every target in turn (a fresh order each cycle): the
    latencies of one cycle meet the same machine noise within milliseconds, so their paired
    differences isolate what a target adds. Per target: latencies by cycle (None for a broken
    connection), statuses, and CPU and run-queue wait over the whole run."""
    loop = asyncio.get_running_loop()
    latencies: dict[str, list[float | None]] = {t.name: [] for t in targets}
    statuses: dict[str, Counter[str]] = {t.name: Counter() for t in targets}
    before = {t.name: proc_times(t.pids) for t in targets}
    start = loop.time()
    for cycle in range(cycles):
        for target in random.Random(cycle).sample(targets, len(targets)):
            begin = loop.time()
            answer = await target.call(0)
            latency = None if answer is None else round((loop.time() - begin) * 1000.0, 3)
            latencies[target.name].append(latency)
            statuses[target.name][str(answer[0]) if answer else "broken"] += 1
    duration = loop.time() - start
    await asyncio.sleep(gap)  # deferred work (logging, learning) lands before CPU is read
    after = {t.name: proc_times(t.pids) for t in targets}
    return {t.name: {"latencies_ms": latencies[t.name], "statuses": dict(statuses[t.name]),
                     "cpu_s": round(after[t.name][0] - before[t.name][0], 3),
                     "wait_s": round(after[t.name][1] - before[t.name][1], 6),
                     "duration_s": round(duration, 3)} for t in targets}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    specs = json.loads(Path(args.targets).read_text())
    targets = [Target(spec, args) for spec in specs]
    try:
        for target in targets:
            await target.warm(args.warmup_requests)
        if args.alternate:
            return {"alternate": await alternate(targets, args.alternate, args.gap),
                    "connection_errors": {t.name: t.connection_errors for t in targets}}
        slices: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
        cpu_before = time.process_time()
        for cycle in range(args.cycles):
            # A fresh order each cycle: a rotation would keep every target behind the same one.
            for target in random.Random(cycle).sample(targets, len(targets)):
                result = await target.run_slice(args.slice, args.gap)
                result["round"] = cycle * args.rounds // args.cycles
                slices[target.name].append(result)
        return {"slices": slices, "loadgen_cpu_s": round(time.process_time() - cpu_before, 3),
                "connection_errors": {t.name: t.connection_errors for t in targets},
                "body_bytes": len(targets[0].requests[0])}
    finally:
        for target in targets:
            target.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", required=True, help="JSON file: [{name, url, key, pids}]")
    ap.add_argument("--model", default="llama", help="model group in the body")
    ap.add_argument("--size-bytes", type=int, required=True, help="prompt bytes per request")
    ap.add_argument("--messages", type=int, default=2, help="messages per request")
    ap.add_argument("--max-tokens", type=int, default=16, help="max_tokens per request")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    ap.add_argument("--slice", type=float, default=1.0, help="seconds per target per cycle")
    ap.add_argument("--cycles", type=int, default=12, help="cycles over all targets")
    ap.add_argument("--gap", type=float, default=0.15,
                    help="idle seconds after each slice, still charged to its target's CPU")
    ap.add_argument("--rounds", type=int, default=3, help="groups of consecutive cycles")
    ap.add_argument("--warmup-requests", type=int, default=8, help="unmeasured, per target")
    ap.add_argument("--variants", type=int, default=16, help="distinct bodies, sent in turn")
    ap.add_argument("--alternate", type=int, default=0, metavar="CYCLES",
                    help="instead of slices: CYCLES rounds of one request to each target in "
                         "turn, concurrency 1 (paired latencies)")
    args = ap.parse_args(argv)
    if not 1 <= args.rounds <= args.cycles:
        ap.error("--rounds must be between 1 and --cycles")
    print(json.dumps(asyncio.run(run(args)), separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
