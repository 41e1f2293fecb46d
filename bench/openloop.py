"""An open-loop HTTP load generator: requests leave on a fixed arrival schedule, whatever the
answers do.

wrk and other closed-loop tools send a connection's next request only once its answer is back,
so a slow service is sent less, and its latency under overload is understated (coordinated
omission). Here request i is due at ``start + i / rate``; its latency counts from that instant,
not from when it could be sent, so a generator that falls behind (a loaded machine) still
charges the wait to the answer. The generator runs in its own process (``python -m
bench.openloop``), one asyncio loop over raw HTTP/1.1 keep-alive sockets (no HTTP library on the
hot path), at most ``--connections`` open at once; a request due while every connection is busy
waits for one, its wait counted.

It prints one JSON document: per stream, the answers by status and code, goodput (2xx a second),
latency percentiles of the 2xx answers and of the refusals, how late the generator itself sent
(``send_lag_p99_ms``: a large value says the machine could not keep the schedule), and
transport errors.

    python -m bench.openloop --url http://127.0.0.1:8000 --path /v1/transactions/score \
        --bodies bodies.jsonl --rate 2000 --seconds 10 --header "X-API-Key: ..."

Several streams (``--stream`` JSON, repeatable) share the loop and the clock: a real-time
stream and a batch stream, or a calm key beside a noisy one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Stream:
    """One stream of requests: what to send, how often, and what came back."""

    name: str
    method: str
    path: str
    rate: float
    bodies: list[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    latencies: list[tuple[int, float, str]] = field(default_factory=list)  # status, s, code
    send_lag: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    resent: int = 0  # sent again on a new connection: the kept-alive one had been closed

    def request(self, host: str, i: int) -> bytes:
        body = self.bodies[i % len(self.bodies)] if self.bodies else b""
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        if self.method != "GET":
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Pool:
    """At most ``size`` keep-alive connections to one host:port."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(size)

    async def exchange(self, payload: bytes) -> tuple[int, bytes, bool]:
        """Send one request, read its answer: (status, body, sent again).

        A kept-alive connection the server closed while it was idle (its keep-alive timeout)
        fails before a byte of the answer; as HTTP clients do, the request is sent again,
        once, on a new connection; the summary counts these (``resent``)."""
        async with self.slots:
            resent = False
            if self.idle:
                reader, writer = self.idle.pop()
                try:
                    return (*await self._exchange(reader, writer, payload), False)
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                        raise
                    resent = True
            reader, writer = await asyncio.open_connection(self.host, self.port)
            return (*await self._exchange(reader, writer, payload), resent)

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
    ) -> tuple[int, bytes]:
        try:
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await reader.readexactly(length) if length else b""
        except BaseException:
            writer.close()
            raise
        if close:
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status, body

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def run_streams(url: str, streams: list[Stream], seconds: float, connections: int) -> float:
    """Send every stream on its schedule for ``seconds``; wait for the answers. The start."""
    split = urlsplit(url)
    host, port = split.hostname or "127.0.0.1", split.port or 80
    pool = Pool(host, port, connections)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    tasks: set[asyncio.Task[None]] = set()

    async def one(stream: Stream, payload: bytes, due: float) -> None:
        try:
            status, body, resent = await pool.exchange(payload)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            stream.errors[type(exc).__name__] += 1
            return
        stream.resent += resent
        code = ""
        if status != 200:
            with contextlib.suppress(ValueError):
                code = str(json.loads(body).get("code", ""))
        stream.latencies.append((status, loop.time() - due, code))

    schedule = [(i / s.rate, i, s) for s in streams for i in range(int(seconds * s.rate))]
    schedule.sort(key=lambda item: item[0])
    host_header = f"{host}:{port}"
    for n, (offset, i, stream) in enumerate(schedule):
        due = start + offset
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        elif n % 16 == 0:
            await asyncio.sleep(0)  # behind schedule: still let answers in now and then
        stream.send_lag.append(max(0.0, loop.time() - due))
        task = loop.create_task(one(stream, stream.request(host_header, i), due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    pool.close()
    return start


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of values, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summary(stream: Stream, seconds: float) -> dict:
    """What one stream got: counts, goodput and latency percentiles (milliseconds)."""
    ok = [s for status, s, _ in stream.latencies if 200 <= status < 300]
    refused = [s for status, s, _ in stream.latencies if status >= 400]

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    return {
        "stream": stream.name,
        "rate": stream.rate,
        "sent": len(stream.send_lag),
        "answers": dict(Counter(str(status) for status, _, _ in stream.latencies)),
        "codes": dict(Counter(code for _, _, code in stream.latencies if code)),
        "errors": dict(stream.errors),
        "resent": stream.resent,
        "goodput": round(len(ok) / seconds, 1),
        "p50_ok_ms": ms(percentile(ok, 0.50)),
        "p99_ok_ms": ms(percentile(ok, 0.99)),
        "p99_refused_ms": ms(percentile(refused, 0.99)),
        "send_lag_p99_ms": ms(percentile(stream.send_lag, 0.99)),
    }


def load_bodies(path: Path | None) -> list[bytes]:
    """One JSON body a line (a JSONL file), as bytes."""
    if path is None:
        return []
    return [line.encode() for line in path.read_text().splitlines() if line.strip()]


def parse_stream(text: str) -> Stream:
    """A ``--stream`` JSON: {name, method, path, rate, bodies (file), headers}."""
    spec = json.loads(text)
    bodies = load_bodies(Path(spec["bodies"])) if spec.get("bodies") else []
    return Stream(
        name=spec.get("name", spec["path"]),
        method=spec.get("method", "POST"),
        path=spec["path"],
        rate=float(spec["rate"]),
        bodies=bodies,
        headers=dict(spec.get("headers", {})),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    parser.add_argument("--path", help="one stream's path (or use --stream)")
    parser.add_argument("--method", default="POST")
    parser.add_argument("--bodies", type=Path, help="JSONL file of request bodies, cycled")
    parser.add_argument("--rate", type=float, help="requests a second of the one stream")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--stream", action="append", default=[], help="a stream as JSON")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=512)
    args = parser.parse_args(argv)
    streams = [parse_stream(text) for text in args.stream]
    if args.path:
        headers = dict(h.split(":", 1) for h in args.header)
        streams.append(
            Stream(
                "main",
                args.method,
                args.path,
                args.rate,
                load_bodies(args.bodies),
                {k.strip(): v.strip() for k, v in headers.items()},
            )
        )
    if not streams:
        parser.error("give --path and --rate, or at least one --stream")
    started = time.monotonic()
    asyncio.run(run_streams(args.url, streams, args.seconds, args.connections))
    result = {
        "seconds": args.seconds,
        "wall_s": round(time.monotonic() - started, 2),
        "streams": [summary(stream, args.seconds) for stream in streams],
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
