"""Load benchmark: API latency with a deep queue and many websocket clients, and under a gzip bomb.

    python bench/bench_load.py                     # 5 runs, 1000 prompts, 50 websocket clients
    python bench/bench_load.py --runs 1 --prompts 300 --ws-clients 10

Each run starts a real server (a subprocess on a free loopback port, fresh base directory, the
test node pack) and a second process holding the websocket clients, which read every frame
(and answer pings) in large reads without decoding the JSON, so that on a small machine they
take as little CPU from the server as they can and the figures are the server's. Then:
1. fill: a slow prompt holds the worker (its progress events go to every client) while four
   posters queue `--prompts` trivial prompts; meanwhile /queue and /object_info are polled
   (one request at a time each, 10 ms apart);
2. drain: the slow prompt ends and the deep queue drains, every prompt's events going to all
   clients (no client_id), while /queue, /object_info and a POST /prompt every 50 ms go on;
3. bomb: 2 s of the same polling as a baseline, then 2 s while three clients each post a 2 MB
   gzip body that inflates to 2 GiB every 0.25 s; the other requests' latency is compared.
p50/p99/max of each route over phases 1-2 are printed per run, with the load average, and the
run checks that every prompt reached /history exactly once.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.server_helpers import LiveServer, gzip_bomb, slow_prompt, value_prompt  # noqa: E402

ROUTES = ("GET /queue", "GET /object_info", "POST /prompt")
TARGET_P99_MS = 100
BOMB_DELTA_MS = 50


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


# -- websocket clients (a separate process) -------------------------------------------------

async def _ws_client(host: str, port: int, cid: str, counts: dict, ready: asyncio.Event, n: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws?clientId={cid} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"websocket handshake refused: {head[:80]!r}")
    counts["connected"] += 1
    if counts["connected"] == n:
        ready.set()
    buf, pos = b"", 0
    try:
        while True:
            chunk = await reader.read(1 << 18)
            if not chunk:
                break
            buf = buf[pos:] + chunk
            pos = 0
            # walk the frame headers in what arrived; a frame cut off waits for the next read
            while len(buf) - pos >= 2:
                opcode, length, head = buf[pos] & 0x0F, buf[pos + 1] & 0x7F, 2
                if length == 126:
                    if len(buf) - pos < 4:
                        break
                    length, head = struct.unpack_from(">H", buf, pos + 2)[0], 4
                elif length == 127:
                    if len(buf) - pos < 10:
                        break
                    length, head = struct.unpack_from(">Q", buf, pos + 2)[0], 10
                if len(buf) - pos < head + length:
                    break
                if opcode == 0x9:  # ping: answer with a masked pong, as a client must
                    payload, mask = buf[pos + head:pos + head + length], os.urandom(4)
                    writer.write(bytes([0x8A, 0x80 | len(payload)]) + mask +
                                 bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))
                elif opcode == 0x8:
                    raise ConnectionError("closed by the server")
                else:
                    counts["text" if opcode == 1 else "binary"] += 1
                pos += head + length
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    counts["closed"] += 1


async def _ws_clients(url: str, n: int) -> None:
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    counts = {"connected": 0, "closed": 0, "text": 0, "binary": 0}
    ready = asyncio.Event()
    tasks = [asyncio.create_task(_ws_client(host, int(port), f"load-{i}", counts, ready, n)) for i in range(n)]
    await asyncio.wait_for(ready.wait(), 60)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    print(f"text {counts['text']} binary {counts['binary']} dropped {counts['closed']}", flush=True)
    for task in tasks:
        task.cancel()


# -- the measuring side -----------------------------------------------------------------------

class Recorder:
    def __init__(self):
        self.latencies: dict[str, list[float]] = {r: [] for r in ROUTES}
        self.errors: list[str] = []

    async def timed(self, session: aiohttp.ClientSession, route: str, url: str, body=None) -> object:
        method = route.split()[0]
        started = time.perf_counter()
        async with session.request(method, url, json=body) as resp:
            data = await resp.read()
        self.latencies[route].append(time.perf_counter() - started)
        if resp.status != 200:
            self.errors.append(f"{route}: {resp.status} {data[:200]!r}")
        return data


async def poll(session, rec: Recorder, route: str, url: str, stop: asyncio.Event, gap: float,
               body_of=None) -> None:
    i = 0
    while not stop.is_set():
        await rec.timed(session, route, url, body_of(i) if body_of else None)
        i += 1
        await asyncio.sleep(gap)


async def queue_empty(session, url: str) -> bool:
    async with session.get(url + "/prompt") as resp:
        return (await resp.json())["exec_info"]["queue_remaining"] == 0


async def send_bomb(host: str, port: int, bomb: bytes) -> tuple[str, float]:
    """Post the bomb; returns the status line and how long the server kept the connection."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((f"POST /prompt HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                  f"Content-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n").encode())
    status = "no answer"
    try:
        writer.write(bomb)
        await writer.drain()
        status = (await reader.readline()).decode(errors="replace").strip()
        while await reader.read(65536):  # until the server closes the connection
            pass
    except ConnectionError as exc:
        status = status if status != "no answer" else f"connection reset ({type(exc).__name__})"
    writer.close()
    return status, time.perf_counter() - started


async def _bombers(url: str, seconds: float) -> None:
    """Three clients each posting a bomb every 0.25 s; prints each answer and how long it took."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    bomb = gzip_bomb()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go"
    deadline = time.monotonic() + seconds

    async def bomber() -> None:
        while time.monotonic() < deadline:
            status, took = await send_bomb(host, int(port), bomb)
            print(f"{took:.3f} {status}", flush=True)
            await asyncio.sleep(0.25)

    await asyncio.gather(*(bomber() for _ in range(3)))


async def one_run(server: LiveServer, prompts: int, ws_clients: int, bomb: bool) -> dict:
    url = server.url
    readers = subprocess.Popen([sys.executable, __file__, "--ws-reader", url, str(ws_clients)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert readers.stdout.readline().strip() == "ready", "websocket clients did not connect"
    rec = Recorder()
    result: dict = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await rec.timed(session, "GET /object_info", url + "/object_info")  # warm-up, not counted
        rec.latencies["GET /object_info"].clear()
        stop = asyncio.Event()
        pollers = [asyncio.create_task(poll(session, rec, "GET /queue", url + "/queue", stop, 0.01)),
                   asyncio.create_task(poll(session, rec, "GET /object_info", url + "/object_info", stop, 0.01))]
        async with session.post(url + "/prompt", json={"prompt": slow_prompt(300, 0.01)}) as resp:
            assert resp.status == 200, await resp.text()
        values = iter(range(prompts))

        async def poster() -> None:
            for value in values:
                await rec.timed(session, "POST /prompt", url + "/prompt", {"prompt": value_prompt(value)})

        started = time.perf_counter()
        await asyncio.gather(*(poster() for _ in range(4)))
        result["fill_s"] = time.perf_counter() - started
        extra = asyncio.create_task(poll(session, rec, "POST /prompt", url + "/prompt", stop, 0.05,
                                         lambda i: {"prompt": value_prompt(prompts + i)}))
        while not await queue_empty(session, url):
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*pollers, extra)
        result["drain_s"] = time.perf_counter() - started
        posted = len(rec.latencies["POST /prompt"]) + 1
        async with session.get(url + "/history") as resp:
            history = await resp.json()
        ok = sum(1 for e in history.values() if e["status"]["status_str"] == "success")
        result["history"] = f"{ok} of {posted} prompts in /history with success"
        result["latency"] = {r: list(v) for r, v in rec.latencies.items()}
        result["errors"] = rec.errors[:5]

        if bomb:
            result["bomb"] = await bomb_phase(session, url)
    readers.stdin.close()
    result["ws"] = readers.stdout.read().strip()
    readers.wait(30)
    return result


async def bomb_phase(session, url: str) -> dict:
    phases = {}
    # started ahead, so the start of a Python process is not measured as the bomb's cost
    bombers = subprocess.Popen([sys.executable, __file__, "--bombers", url, "2"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert bombers.stdout.readline().strip() == "ready"
    await asyncio.sleep(1.0)
    for name in ("baseline", "bomb"):
        rec = Recorder()
        stop = asyncio.Event()
        pollers = [asyncio.create_task(poll(session, rec, "GET /queue", url + "/queue", stop, 0.01)),
                   asyncio.create_task(poll(session, rec, "GET /object_info", url + "/object_info", stop, 0.01)),
                   asyncio.create_task(poll(session, rec, "POST /prompt", url + "/prompt", stop, 0.05,
                                            lambda i: {"prompt": value_prompt(10_000_000 + i)}))]
        if name == "bomb":  # from another process, so the bombs cost this process's loop nothing
            bombers.stdin.write("go\n")
            bombers.stdin.flush()
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*pollers)
        answers = []
        if name == "bomb":
            out, _ = bombers.communicate(timeout=60)
            answers = [(line.split(" ", 1)[1], float(line.split(" ", 1)[0])) for line in out.splitlines()]
        phases[name] = {"latency": rec.latencies, "answers": answers, "errors": rec.errors[:3]}
    return phases


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def report(run: int, result: dict) -> bool:
    load = os.getloadavg()
    print(f"run {run}: fill {result['fill_s']:.2f} s, fill+drain {result['drain_s']:.2f} s, {result['history']}; "
          f"websocket clients: {result['ws']}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    good = not result["errors"]
    for route in ROUTES:
        values = result["latency"][route]
        p99 = percentile(values, 99)
        good &= p99 * 1000 < TARGET_P99_MS
        print(f"  {route:18s} n={len(values):5d}  p50 {ms(statistics.median(values)):>6s} ms  "
              f"p99 {ms(p99):>6s} ms  max {ms(max(values)):>7s} ms")
    for err in result["errors"]:
        print(f"  error: {err}")
    if "bomb" in result:
        base, during = result["bomb"]["baseline"], result["bomb"]["bomb"]
        answers = during["answers"]
        print(f"  gzip bombs (3 clients, each one every 0.25 s for 2 s): {len(answers)} sent, answers "
              f"{sorted(set(a[0] for a in answers))}, connection closed after at most "
              f"{max(a[1] for a in answers):.2f} s")
        for route in ROUTES:
            b, d = base["latency"][route], during["latency"][route]
            delta = max(d) - max(b)
            good &= percentile(d, 99) - percentile(b, 99) < BOMB_DELTA_MS / 1000 and delta < BOMB_DELTA_MS / 1000
            print(f"  {route:18s} baseline p99 {ms(percentile(b, 99)):>6s} max {ms(max(b)):>6s} ms | "
                  f"with bomb p99 {ms(percentile(d, 99)):>6s} max {ms(max(d)):>6s} ms (n={len(d)})")
    return good


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--ws-clients", type=int, default=50)
    parser.add_argument("--no-bomb", action="store_true")
    parser.add_argument("--ws-reader", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--bombers", nargs=2, metavar=("URL", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ws_reader:
        asyncio.run(_ws_clients(args.ws_reader[0], int(args.ws_reader[1])))
        return 0
    if args.bombers:
        asyncio.run(_bombers(args.bombers[0], float(args.bombers[1])))
        return 0
    print(f"{args.runs} run(s): {args.prompts} queued prompts, {args.ws_clients} websocket clients; "
          f"target p99 < {TARGET_P99_MS} ms for each route, a bomb adds < {BOMB_DELTA_MS} ms; {os.cpu_count()} CPUs")
    passed = 0
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as tmp:
            server = LiveServer(Path(tmp)).start()
            try:
                result = asyncio.run(one_run(server, args.prompts, args.ws_clients, not args.no_bomb))
            finally:
                server.stop()
        passed += report(run, result)
    print(f"target met in {passed} of {args.runs} run(s)")
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
