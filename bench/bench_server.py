"""Server benchmark on loopback: queue throughput, and POST /prompt latency while a prompt runs.

    python bench/bench_server.py                      # 10 clients, 200 prompts per phase
    python bench/bench_server.py --clients 4 --prompts 100

Starts a real server (a subprocess on a free loopback port, in a temporary base directory with
the test node pack), then:
1. latency: a slow prompt starts; meanwhile the clients queue the prompts concurrently and
   each POST /prompt is timed (the HTTP side must not wait for the running prompt);
2. throughput: the clients queue the prompts again (other values, so nothing is cached) and
   the time from the first POST to the last `executing {node: null}` gives prompts per second.
Afterwards every prompt must be in /history exactly once, have run exactly once, and each
client must have seen exactly one completion per prompt.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.server_helpers import LiveServer, slow_prompt, value_prompt  # noqa: E402

TIMEOUT = 300


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def client(session: aiohttp.ClientSession, url: str, cid: str, values: list[int],
                 latencies: list[float], completions: collections.Counter, posted_at: list[float]) -> dict[str, int]:
    """Queue one prompt per value, timing each POST, then wait until all of them finished."""
    async with session.ws_connect(f"{url}/ws?clientId={cid}") as ws:
        await ws.receive_json()  # status
        ids: dict[str, int] = {}
        for value in values:
            started = time.perf_counter()
            async with session.post(url + "/prompt", json={"prompt": value_prompt(value), "client_id": cid}) as resp:
                doc = await resp.json()
            latencies.append(time.perf_counter() - started)
            assert resp.status == 200, doc
            ids[doc["prompt_id"]] = value
        posted_at.append(time.perf_counter())
        left = set(ids)
        while left:
            msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            doc = msg.json()
            data = doc.get("data") or {}
            if doc["type"] == "executing" and data.get("node") is None:
                completions[data["prompt_id"]] += 1
                left.discard(data["prompt_id"])
        return ids


async def phase(session, url, clients: int, prompts: int, first_value: int, completions) -> tuple:
    latencies: list[float] = []
    posted_at: list[float] = []
    share = [list(range(first_value + i, first_value + prompts, clients)) for i in range(clients)]
    started = time.perf_counter()
    results = await asyncio.gather(*(client(session, url, f"bench-{first_value}-{i}", share[i], latencies,
                                            completions, posted_at) for i in range(clients)))
    elapsed = time.perf_counter() - started
    ids: dict[str, int] = {}
    for r in results:
        ids.update(r)
    return ids, latencies, elapsed, max(posted_at)


async def bench(url: str, clients: int, prompts: int) -> int:
    completions: collections.Counter = collections.Counter()
    async with aiohttp.ClientSession() as session:
        # phase 1: POST latency while a slow prompt holds the worker
        async with session.ws_connect(f"{url}/ws?clientId=bench-slow") as ws:
            await ws.receive_json()
            async with session.post(url + "/prompt", json={"prompt": slow_prompt(400, 0.01),
                                                           "client_id": "bench-slow"}) as resp:
                slow_id = (await resp.json())["prompt_id"]
            while (await asyncio.wait_for(ws.receive_json(), TIMEOUT))["type"] != "progress":
                pass
            post_phase = asyncio.create_task(phase(session, url, clients, prompts, 0, completions))
            slow_done_at = None
            while slow_done_at is None:
                doc = await asyncio.wait_for(ws.receive_json(), TIMEOUT)
                if doc["type"] == "executing" and doc["data"]["node"] is None:
                    slow_done_at = time.perf_counter()
                    completions[slow_id] += 1
            ids1, latencies1, _, last_post = await asyncio.wait_for(post_phase, TIMEOUT)
        # phase 2: throughput of trivial prompts
        ids2, latencies2, elapsed, _ = await phase(session, url, clients, prompts, 100_000, completions)
        async with session.get(url + "/history") as resp:
            history = await resp.json()

    expected = {**ids1, **ids2}
    problems = []
    if len(expected) != 2 * prompts:
        problems.append(f"{2 * prompts - len(expected)} prompt ids were handed out twice")
    for pid, value in expected.items():
        entry = history.get(pid)
        if entry is None:
            problems.append(f"{pid} missing from history")
            continue
        starts = [m for m in entry["status"]["messages"] if m[0] == "execution_start"]
        if len(starts) != 1 or entry["status"]["status_str"] != "success":
            problems.append(f"{pid} ran {len(starts)} times, status {entry['status']['status_str']}")
        if entry["outputs"] != {"2": {"text": [str(value)]}}:
            problems.append(f"{pid} has the wrong output {entry['outputs']}")
        if completions[pid] != 1:
            problems.append(f"{pid} completed {completions[pid]} times on the websocket")
    extra = set(history) - set(expected) - {slow_id}
    if extra:
        problems.append(f"{len(extra)} unexpected history entries")

    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    print(f"clients: {clients}, prompts per phase: {prompts}")
    print(f"POST /prompt while a slow prompt runs: p50 {ms(statistics.median(latencies1))}, "
          f"p99 {ms(percentile(latencies1, 99))}, max {ms(max(latencies1))} "
          f"(all sent while it ran: {'yes' if last_post < slow_done_at else 'NO, make it slower'})")
    print(f"throughput: {prompts} prompts queued and run in {elapsed:.2f} s = {prompts / elapsed:.1f} prompts/s "
          f"(POST p99 {ms(percentile(latencies2, 99))})")
    print(f"history check: {2 * prompts + 1} prompts, each in history once and run once: "
          f"{'ok' if not problems else 'FAILED'}")
    for problem in problems[:20]:
        print("  " + problem)
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = LiveServer(Path(tmp)).start()
        try:
            return asyncio.run(bench(server.url, args.clients, args.prompts))
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
