"""Cluster benchmark: throughput with 1 and 2 Ray workers, and the dispatch overhead per prompt.

    python bench/bench_cluster.py                       # 2 rounds, 8 model prompts per phase
    python bench/bench_cluster.py --prompts 12 --rounds 3 --steps 6 --size 256

Starts a Ray cluster in this process and, on it, two real servers (subprocesses on free loopback
ports) over one temporary base directory each: one with 1 worker, one with 2, every worker one
CPU and one torch thread. Then:
1. throughput: prompts that run a tiny real-layout SD1.5 checkpoint (tests/models_tiny.py:
   load, encode, KSampler, VAE decode, save; a new seed each, so nothing is cached) are queued at
   once and timed from the first POST to the last completion, alternating the 1- and 2-worker
   servers for --rounds rounds (other jobs on the machine come and go; alternating shares that
   out). Each worker runs a warm-up prompt first, so the checkpoint is loaded before timing.
2. dispatch overhead: trivial prompts (two test nodes, well under a millisecond of work), one at
   a time, POST to `executing {node: null}` on the websocket: the median round trip through the
   cluster minus the median through a single-process server. Then --burst trivial prompts queued
   at once, as a rate: what the server's dispatch sustains when the work itself costs nothing.
Every prompt must end in the history exactly once. The load average is printed with the figures,
and so is what the machine gives two processes right now: two busy single-thread processes'
total work over one's (x2.0 on two idle cores; a shared machine gives less, and the worker
speed-up cannot exceed it).
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.server_helpers import LiveServer, value_prompt  # noqa: E402

TIMEOUT = 600
_READY = re.compile(r"worker #\d+ pid \d+ on \S+ ready")


def _spin(seconds: float, out) -> None:
    end, n = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        for _ in range(10_000):
            n += 1
    out.put(n)


def machine_parallelism(seconds: float = 2.0) -> float:
    """Work two busy processes get done together over what one gets done alone."""
    done = {}
    for count in (1, 2):
        out = multiprocessing.Queue()
        procs = [multiprocessing.Process(target=_spin, args=(seconds, out)) for _ in range(count)]
        for p in procs:
            p.start()
        done[count] = sum(out.get() for _ in procs)
        for p in procs:
            p.join()
    return done[2] / done[1]


def model_prompt(seed: int, steps: int, size: int) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": seed, "steps": steps, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal",
                                                   "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "bench"}},
    }


def base_dir(root: Path, name: str, checkpoint: Path) -> Path:
    base = root / name
    (base / "models" / "checkpoints").mkdir(parents=True)
    os.link(checkpoint, base / "models" / "checkpoints" / checkpoint.name)
    return base


def wait_ready(server: LiveServer, workers: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while len(_READY.findall(server.log())) < workers:
        if time.monotonic() > deadline or not server.alive():
            raise RuntimeError(f"workers not ready:\n{server.log()[-3000:]}")
        time.sleep(0.2)


async def drain(server: LiveServer, prompts: list[dict]) -> float:
    """Queue all prompts at once; seconds from the first POST to the last completion."""
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{server.url}/ws?clientId=bench") as ws:
        started = time.perf_counter()
        ids = set()
        for prompt in prompts:
            async with session.post(server.url + "/prompt", json={"prompt": prompt, "client_id": "bench"}) as r:
                doc = await r.json()
                assert r.status == 200, doc
                ids.add(doc["prompt_id"])
        left = set(ids)
        while left:
            msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            doc = msg.json()
            data = doc.get("data") or {}
            if doc["type"] == "execution_error":
                raise RuntimeError(f"prompt failed: {data.get('exception_message')}")
            if doc["type"] == "executing" and data.get("node") is None:
                left.discard(data.get("prompt_id"))
        elapsed = time.perf_counter() - started
        async with session.get(server.url + "/history") as r:
            history = await r.json()
        assert all(p in history for p in ids), "a prompt is missing from the history"
        return elapsed


async def round_trips(server: LiveServer, count: int, first_value: int) -> list[float]:
    """Seconds from POST /prompt to `executing {node: null}`, one prompt at a time."""
    times = []
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{server.url}/ws?clientId=rt") as ws:
        await ws.receive_json()
        for value in range(first_value, first_value + count):
            started = time.perf_counter()
            async with session.post(server.url + "/prompt",
                                    json={"prompt": value_prompt(value), "client_id": "rt"}) as r:
                prompt_id = (await r.json())["prompt_id"]
            while True:
                doc = await asyncio.wait_for(ws.receive_json(), TIMEOUT)
                data = doc.get("data") or {}
                if doc["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
            times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8, help="model prompts per throughput phase")
    parser.add_argument("--rounds", type=int, default=2, help="1-worker / 2-worker alternations")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps per model prompt")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--trivial", type=int, default=60, help="trivial prompts for the dispatch overhead")
    parser.add_argument("--burst", type=int, default=200, help="trivial prompts queued at once (dispatch rate)")
    opts = parser.parse_args()

    import ray

    from tests.models_tiny import write_tiny_full_checkpoint

    root = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    print(f"writing the tiny checkpoint under {root} ...", flush=True)
    checkpoint = write_tiny_full_checkpoint(root / "tiny_sd15.safetensors", "sd15")
    # 3 logical CPUs on this 2-core machine: room for the 1-worker and the 2-worker server at
    # once (only one of them works at a time); each worker still runs one torch thread
    ray.init(num_cpus=3, include_dashboard=False, object_store_memory=80 << 20, logging_level="WARNING",
             log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    packs = ("lg_test_nodes.py",)
    servers = {w: LiveServer(base_dir(root, f"w{w}", checkpoint), "--ray", address, "--ray-workers", str(w),
                             "--ray-cpus-per-worker", "1", "--preview-method", "none", packs=packs)
               for w in (1, 2)}
    single = LiveServer(base_dir(root, "single", checkpoint), "--preview-method", "none", packs=packs)
    try:
        for workers, server in servers.items():
            server.start(timeout=TIMEOUT)
            wait_ready(server, workers)
            # one warm-up prompt per worker: both idle, so each takes one and loads the checkpoint
            asyncio.run(drain(server, [model_prompt(10_000 + i, opts.steps, opts.size) for i in range(workers)]))
        single.start(timeout=TIMEOUT)

        rates: dict[int, list[float]] = {1: [], 2: []}
        parallel: list[float] = []
        seed = 0
        for r in range(opts.rounds):
            parallel.append(machine_parallelism())
            print(f"round {r + 1}: two busy processes get x{parallel[-1]:.2f} the work of one", flush=True)
            for workers, server in servers.items():
                prompts = [model_prompt(seed + i, opts.steps, opts.size) for i in range(opts.prompts)]
                seed += opts.prompts
                elapsed = asyncio.run(drain(server, prompts))
                rates[workers].append(opts.prompts / elapsed)
                print(f"round {r + 1}, {workers} worker(s): {opts.prompts} prompts in {elapsed:.2f} s = "
                      f"{opts.prompts / elapsed:.3f} prompts/s   (load average {os.getloadavg()[0]:.2f})", flush=True)

        cluster_rt = asyncio.run(round_trips(servers[1], opts.trivial, 50_000))
        single_rt = asyncio.run(round_trips(single, opts.trivial, 50_000))
        drained = {name: opts.burst / asyncio.run(drain(server, [value_prompt(60_000 + i) for i in range(opts.burst)]))
                   for name, server in (("cluster, 2 workers", servers[2]), ("single process", single))}
        load = os.getloadavg()
    finally:
        for server in (*servers.values(), single):
            server.stop()
        ray.shutdown()

    one, two = statistics.mean(rates[1]), statistics.mean(rates[2])
    overhead_ms = (statistics.median(cluster_rt) - statistics.median(single_rt)) * 1000
    print()
    print(f"model prompts ({opts.steps} steps, {opts.size}x{opts.size}, tiny SD1.5 checkpoint, 1 torch thread "
          f"per worker): 1 worker {one:.3f} prompts/s, 2 workers {two:.3f} prompts/s, "
          f"speed-up x{two / one:.2f} (target >= 1.7); the machine gave two processes "
          f"x{statistics.mean(parallel):.2f} the work of one meanwhile")
    print(f"trivial prompt round trip, median of {opts.trivial}: cluster {statistics.median(cluster_rt) * 1000:.1f} ms, "
          f"single process {statistics.median(single_rt) * 1000:.1f} ms; dispatch overhead {overhead_ms:.1f} ms "
          f"per prompt (target < 20); cluster p90 {sorted(cluster_rt)[int(0.9 * len(cluster_rt))] * 1000:.1f} ms")
    print("trivial prompts queued at once: " + ", ".join(f"{name} {rate:.0f} prompts/s" for name, rate in drained.items()))
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    ok = two / one >= 1.7 and overhead_ms < 20
    print("targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
