"""`python main.py --ray ADDRESS` against a real Ray cluster started in this test process.

The cluster (2 CPUs) starts once for the module and one server with two single-CPU worker
actors serves every test, in file order; the last test kills and restarts that server. Worker
processes are real: a test kills one with SIGKILL as the OOM killer would.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import aiohttp
import pytest
import ray  # in the test extra

from tests.server_helpers import LiveServer, get_json, next_json, post_json, queue, run, until_done, wait_history

WORKERS = 2
TIMEOUT = 120  # a restarted worker imports torch and every node pack again: slow on a loaded machine
_READY = re.compile(r"worker #(\d+) pid (\d+) on \S+ ready")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=WORKERS, include_dashboard=False, object_store_memory=80 << 20,
             logging_level="WARNING", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    (base / "models" / "checkpoints").mkdir(parents=True)
    for name in ("a.safetensors", "b.safetensors"):
        (base / "models" / "checkpoints" / name).write_bytes(name.encode() * 1000)
    return base


@pytest.fixture(scope="module")
def server(cluster, base):
    srv = LiveServer(base, "--ray", cluster, "--ray-cpus-per-worker", "1",
                     packs=("lg_test_nodes.py", "lg_preview_nodes.py", "lg_cluster_nodes.py"),
                     env={"RAY_DEDUP_LOGS": "0"})  # each worker's log lines, even when alike
    srv.start(timeout=TIMEOUT)
    wait_workers(srv, WORKERS)
    yield srv
    srv.stop()


def wait_workers(srv: LiveServer, count: int, after: int = 0, timeout: float = TIMEOUT) -> dict[int, int]:
    """Waits until `count` workers have said they are ready in the server log (past offset
    `after`); returns worker index -> pid of the latest."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = {int(i): int(pid) for i, pid in _READY.findall(srv.log()[after:])}
        if len(ready) >= count:
            return ready
        assert srv.alive(), srv.log()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"workers not ready:\n{srv.log()[-3000:]}")


def probe(value: int, steps: int = 1, delay: float = 0.0, image: bool = False, ckpt: str | None = None) -> dict:
    prompt = {"1": {"class_type": "ClusterProbe", "inputs": {"value": value, "steps": steps, "delay": delay}}}
    if image:  # a distinct image per value, saved under one prefix by whichever worker runs it
        prompt["2"] = {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                              "color": value}}
        prompt["3"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "spread"}}
    if ckpt:
        prompt["4"] = {"class_type": "ClusterCheckpoint", "inputs": {"ckpt_name": ckpt}}
        prompt["1"]["inputs"]["anything"] = ["4", 0]
    return prompt


def pid_of(entry: dict) -> int:
    return entry["outputs"]["1"]["pid"][0]


def messages(entry: dict, kind: str) -> list[dict]:
    return [data for event, data in entry["status"]["messages"] if event == kind]


async def history(session: aiohttp.ClientSession, srv: LiveServer) -> dict:
    status, doc = await get_json(session, srv.url + "/history")
    assert status == 200
    return doc


def wait_file(path: Path, timeout: float = TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_worker_count_follows_the_cluster_and_flags(cluster):
    from app.args import parse_args
    from server.cluster.ray_setup import plan_workers, worker_args

    def plan(*flags):
        return plan_workers(parse_args(["--ray", cluster, *flags]))

    assert (plan("--ray-cpus-per-worker", "1").count, plan("--ray-cpus-per-worker", "1").threads) == (2, 1)
    # no machine has 4 CPUs: one worker gets both
    assert (plan().count, plan().num_cpus, plan().threads) == (1, 2, 2)
    assert plan("--ray-workers", "3", "--ray-cpus-per-worker", "1").count == 3
    shipped = worker_args(parse_args(["--ray", cluster, "--base-directory", "rel/base",
                                      "--extra-model-paths-config", "a.yaml"]))
    assert shipped.base_directory == Path.cwd() / "rel" / "base"
    assert shipped.extra_model_paths_config == [Path.cwd() / "a.yaml"]


def test_an_unreachable_cluster_address_is_told_at_once():
    import socket

    from server.cluster.ray_setup import check_reachable

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(SystemExit, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - started < 5


def test_twenty_prompts_spread_over_both_workers_each_once(server, base):
    async def main():
        async with aiohttp.ClientSession() as session:
            ids = [await queue(session, server, probe(1000 + i, steps=2, delay=0.05, image=True)) for i in range(20)]
            entries = [await wait_history(session, server, p, timeout=TIMEOUT) for p in ids]
            return ids, entries, await history(session, server)

    ids, entries, everything = run(main())
    assert all(e["status"]["status_str"] == "success" for e in entries)
    assert len({pid_of(e) for e in entries}) == WORKERS  # both workers ran some
    assert sum(1 for p in everything if p in ids) == 20  # each exactly once in the history
    # SaveImage numbering holds across workers: 20 files, 1..20, none overwritten
    names = sorted(e["outputs"]["3"]["images"][0]["filename"] for e in entries)
    assert names == [f"spread_{n:05d}_.png" for n in range(1, 21)]
    assert sorted(p.name for p in (base / "output").glob("spread_*")) == names


def test_events_and_previews_reach_only_the_client_that_queued(server):
    async def client(session, name):
        ws = await session.ws_connect(f"{server.url}/ws?clientId={name}")
        assert (await next_json(ws))["type"] == "status"
        return ws

    async def main():
        async with aiohttp.ClientSession() as session:
            ws_a, ws_b = await client(session, "alice"), await client(session, "bob")
            sampler = {"1": {"class_type": "TestPreviewSampler",
                             "inputs": {"steps": 3, "delay": 0.15, "family": "sd1", "size": 8, "seed": 1}},
                       "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
            a = await queue(session, server, sampler, client_id="alice")
            b = await queue(session, server, probe(2000, steps=3, delay=0.05), client_id="bob")
            frames_a: list[bytes] = []
            frames_b: list[bytes] = []
            got_a = await until_done(ws_a, a, timeout=TIMEOUT, binary=frames_a)
            got_b = await until_done(ws_b, b, timeout=TIMEOUT, binary=frames_b)
            await asyncio.sleep(0.3)  # anything misdirected would have arrived by now
            stray_a = [m for m in await drain(ws_a) if isinstance(m, dict)]
            stray_b = [m for m in await drain(ws_b) if isinstance(m, dict)]
            return a, b, got_a, got_b, frames_a, frames_b, stray_a, stray_b

    a, b, got_a, got_b, frames_a, frames_b, stray_a, stray_b = run(main())
    for prompt_id, got, other in ((a, got_a, b), (b, got_b, a)):
        kinds = [m["type"] for m in got if (m.get("data") or {}).get("prompt_id") == prompt_id]
        for kind in ("execution_start", "executing", "progress", "progress_state", "executed", "execution_success"):
            assert kind in kinds, (kind, kinds)
        assert not [m for m in got if (m.get("data") or {}).get("prompt_id") == other]
    assert frames_a and not frames_b  # previews made on the worker reach alice only
    assert frames_a[0][:4] in (b"\0\0\0\1", b"\0\0\0\4")
    assert not [m for m in stray_a + stray_b if m.get("type") != "status"]


async def drain(ws) -> list:
    out = []
    while True:
        try:
            msg = await asyncio.wait_for(ws.receive(), 0.2)
        except asyncio.TimeoutError:
            return out
        out.append(msg.json() if msg.type == aiohttp.WSMsgType.TEXT else msg.data)


def test_interrupt_reaches_the_worker_running_the_prompt(server):
    async def main():
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{server.url}/ws?clientId=stopper")
            long = await queue(session, server, probe(3000, steps=400, delay=0.05), client_id="stopper")
            while True:  # it is running on a worker once progress arrives
                msg = await next_json(ws, timeout=TIMEOUT)
                if msg["type"] == "progress" and msg["data"]["prompt_id"] == long:
                    break
            started = time.monotonic()
            status, _ = await post_json(session, server.url + "/interrupt", {"prompt_id": long})
            assert status == 200
            got = await until_done(ws, long, timeout=TIMEOUT)
            elapsed = time.monotonic() - started
            return long, got, elapsed, await wait_history(session, server, long)

    _, got, elapsed, entry = run(main())
    assert "execution_interrupted" in [m["type"] for m in got]
    assert elapsed < 10  # not the 20 s it would have run
    assert entry["status"]["status_str"] == "error" and messages(entry, "execution_interrupted")


def test_prompt_needing_a_node_the_workers_lack_is_refused_cleanly(server):
    async def main():
        async with aiohttp.ClientSession() as session:
            refused = await queue(session, server, {"1": {"class_type": "ClusterServerOnly", "inputs": {"value": 1}}})
            entry = await wait_history(session, server, refused, timeout=TIMEOUT)
            after = await queue(session, server, probe(4000))
            return entry, await wait_history(session, server, after, timeout=TIMEOUT)

    entry, after = run(main())
    assert entry["status"]["status_str"] == "error"
    error = messages(entry, "execution_error")[0]
    assert "ClusterServerOnly" in error["exception_message"] and "worker" in error["exception_message"]
    assert after["status"]["status_str"] == "success"  # the workers go on


def test_priorities_and_deletions_as_in_the_single_process_queue(server):
    async def main():
        async with aiohttp.ClientSession() as session:
            busy = [await queue(session, server, probe(5000 + i, steps=10, delay=0.1)) for i in range(WORKERS)]
            first = await queue(session, server, probe(5010, steps=10, delay=0.1))
            second = await queue(session, server, probe(5011, steps=1))
            dropped = await queue(session, server, probe(5012, steps=1))
            jumped = await queue(session, server, probe(5013, steps=10, delay=0.1), front=True)
            status, _ = await post_json(session, server.url + "/queue", {"delete": [dropped]})
            assert status == 200
            status, pending = await get_json(session, server.url + "/queue")
            assert dropped not in [item[1] for item in pending["queue_pending"] + pending["queue_running"]]
            started = {p: (await wait_history(session, server, p, timeout=TIMEOUT))["outputs"]["1"]["started"][0]
                       for p in busy + [first, second, jumped]}
            status, done = await get_json(session, server.url + "/history")
            return started, list(done), first, second, dropped, jumped

    started, done, first, second, dropped, jumped = run(main())
    assert dropped not in done
    # once the busy pair is done, `jumped` and `first` take both workers; `second` waits for one
    assert started[jumped] < started[second] and started[first] < started[second]


def test_dispatch_prefers_the_worker_holding_the_checkpoint(server):
    async def main():
        async with aiohttp.ClientSession() as session:
            # one each: afterwards each worker holds one of the two checkpoint files
            warm = [await queue(session, server, probe(6000 + i, ckpt=name, steps=5, delay=0.05))
                    for i, name in enumerate(("a.safetensors", "b.safetensors"))]
            entries = [await wait_history(session, server, p, timeout=TIMEOUT) for p in warm]
            holder = {name: pid_of(e) for name, e in zip(("a.safetensors", "b.safetensors"), entries)}
            runs = []
            for i, name in enumerate(["b.safetensors", "a.safetensors", "a.safetensors", "b.safetensors",
                                      "a.safetensors", "b.safetensors"]):
                p = await queue(session, server, probe(6100 + i, ckpt=name))  # one at a time, both idle
                runs.append((name, pid_of(await wait_history(session, server, p, timeout=TIMEOUT))))
            return holder, runs

    holder, runs = run(main())
    assert len(set(holder.values())) == WORKERS
    assert all(pid == holder[name] for name, pid in runs), (holder, runs)


def test_free_reaches_every_worker(server):
    offset = len(server.log())

    async def main():
        async with aiohttp.ClientSession() as session:
            status, _ = await post_json(session, server.url + "/free", {"unload_models": True})
            assert status == 200

    run(main())
    deadline = time.monotonic() + TIMEOUT
    while len(re.findall(r"PromptWorker pid=(\d+).*freed memory \(unload_models\)", server.log()[offset:])) < WORKERS:
        assert time.monotonic() < deadline, server.log()[offset:]
        time.sleep(0.1)


def test_a_worker_killed_mid_prompt_loses_nothing(server, base):
    running = base / "output" / "running"
    offset = len(server.log())

    async def main():
        async with aiohttp.ClientSession() as session:
            values = list(range(7000, 7006))
            ids = dict(zip(values, [await queue(session, server, probe(v, steps=10, delay=0.1)) for v in values]))
            victim_pid = int(wait_file(running / "7000.pid"))
            os.kill(victim_pid, signal.SIGKILL)
            entries = {v: await wait_history(session, server, p, timeout=TIMEOUT) for v, p in ids.items()}
            return ids, victim_pid, entries, await history(session, server)

    ids, victim_pid, entries, everything = run(main())
    assert all(e["status"]["status_str"] == "success" for e in entries.values())
    assert sum(1 for p in everything if p in ids.values()) == len(ids)  # each exactly once
    lost = entries[7000]
    assert [m["reason"] for m in messages(lost, "execution_interrupted")] == ["worker_lost"]
    assert pid_of(lost) != victim_pid  # it ran again, on the other worker
    assert not any(pid_of(e) == victim_pid for v, e in entries.items() if v != 7000)
    # Ray restarted the worker: it says it is ready again and runs prompts
    restarted = wait_workers(server, 1, after=offset)
    assert victim_pid not in restarted.values()


def test_server_restart_while_workers_run_keeps_everything(server, base):
    running = base / "output" / "running"

    async def before():
        async with aiohttp.ClientSession() as session:
            ids = [await queue(session, server, probe(8000 + i, steps=10, delay=0.1)) for i in range(4)]
            wait_file(running / "8000.pid")
            return ids, await history(session, server)

    ids, done_before = run(before())
    server.kill()  # a crash: no cleanup; the workers go with it
    offset = len(server.log())
    server.start(timeout=TIMEOUT)
    wait_workers(server, WORKERS, after=offset)

    async def after():
        async with aiohttp.ClientSession() as session:
            entries = [await wait_history(session, server, p, timeout=TIMEOUT) for p in ids]
            return entries, await history(session, server)

    entries, done_after = run(after())
    assert set(done_before) <= set(done_after)  # finished history survived
    assert all(e["status"]["status_str"] == "success" for e in entries)
    assert sum(1 for p in done_after if p in ids) == len(ids)
    cut_short = [e for e in entries if messages(e, "execution_interrupted")]
    assert cut_short and all(m["reason"] == "server_restart"
                             for e in cut_short for m in messages(e, "execution_interrupted"))
