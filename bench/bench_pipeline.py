"""The whole default text-to-image workflow on real-size random SD1.5 weights, process start to PNG.

    python bench/bench_pipeline.py                 # default precision and --force-fp32
    python bench/bench_pipeline.py --lora --free   # also the LoRA run and RSS after POST /free
    python bench/bench_pipeline.py --steps 20 --configs default
    python bench/bench_pipeline.py --configs fp32,fp32-budget   # exact fp32, also under a weight budget
    python bench/bench_pipeline.py --load-only     # only the checkpoint loading: RSS before and peak

The workflow is ComfyUI's default graph (CheckpointLoaderSimple, two CLIPTextEncode, 512x512
EmptyLatentImage, KSampler euler/normal CFG 8, VAEDecode, SaveImage) with 4 steps unless told,
the comparison of issue 13 (ComfyUI a125cd84 took 87.7 s and 6.9 GB peak RSS for it on this
2-core CPU). The checkpoint is bench/real_size_models.py's fp32 v1-5 layout (4.27 GB, written once
under --models-dir). Each configuration runs in a fresh process started the way `main.py run`
starts (create_runtime, then the executor); reported per process: wall time from spawn to exit,
CPU time (user + system, wait4's for that child alone), peak RSS (the largest of the process's
high-water marks, read and reset at each node, so the peak of each phase is printed too), and per
node the time between its "executing" events; seconds per step are the mean gap between the sampler's
progress events after the first (the first step also pays for loading the model for use).
The default configuration's image is compared with --force-fp32's: PSNR of the 8-bit PNGs.

--lora: one process runs the workflow without a LoRA, then with a rank-32 LoRA on every
attention and MLP projection at strength 1, then again with a new seed (patches already
applied: no patch work), printing KSampler's time and seconds per step for each.
--free: a real server (fresh base directory) runs the workflow; its RSS is read fresh, after the
run and after POST /free {"unload_models": true, "free_memory": true}.

Figures depend on what else runs: the load average is printed with them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHECKPOINT = "sd15_random_fp32.safetensors"
LORA = "sd15_random_lora_r32.safetensors"
# fp32-budget: exact fp32 with the weights held to 3700 MiB (SD1.5's UNet and VAE, 3598 MiB in fp32;
# with its text encoder, 469 MiB more, they do not fit), so the model-lifetime service releases the
# text encoder once the prompts are encoded and rebuilds it from the file when a prompt changes.
CONFIGS = {"default": [], "fp32": ["--force-fp32"],
           "fp32-budget": ["--force-fp32", "--model-memory-budget", "3700"]}
# issue 13's targets: wall time as a fraction of ComfyUI's 87.7 s, peak RSS in GB
COMFYUI_WALL_S = 87.7
TARGETS = {"default": (0.5, 3.0), "fp32": (0.75, 4.8), "fp32-budget": (0.75, 4.8)}


def workflow(steps: int, size: int, seed: int = 1, lora: float | None = None, prefix: str = "bench",
             checkpoint: str = CHECKPOINT) -> dict:
    """ComfyUI's default graph; with `lora`, a LoraLoader at that strength between loader and users."""
    model, clip = ["4", 0], ["4", 1]
    prompt = {
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 8.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": model,
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bottle of wine on a table, photograph",
                                                         "clip": clip}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": clip}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }
    if lora is not None:
        prompt["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": LORA,
                                                               "strength_model": lora, "strength_clip": lora}}
        prompt["3"]["inputs"]["model"] = ["10", 0]
        prompt["6"]["inputs"]["clip"] = prompt["7"]["inputs"]["clip"] = ["10", 1]
    return prompt


def prepare_base(base: Path, models_dir: Path, with_lora: bool = False) -> None:
    from bench.real_size_models import write_sd15_checkpoint, write_sd15_lora

    files = [("checkpoints", CHECKPOINT, write_sd15_checkpoint)]
    if with_lora:
        files.append(("loras", LORA, lambda path: write_sd15_lora(path, rank=32)))
    for folder, name, write in files:
        source = write(models_dir / name)   # written once, reused while its parameters match
        target = base / "models" / folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(source)


# -- one configuration in a fresh process -------------------------------------------------------


def high_water_gb() -> float:
    """This process's peak RSS since the last reset (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def reset_high_water() -> None:
    """Lower VmHWM to the current RSS (Linux: "5" to clear_refs), so each node's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def child(config: str, base: Path, steps: int, size: int, lora_run: bool, out: Path) -> None:
    from app.args import parse_args
    from app.runtime import create_runtime

    flags = ["--base-directory", str(base), "--disable-all-custom-nodes", *CONFIGS[config]]
    runtime = create_runtime(parse_args(flags), log=lambda _msg: None)
    policy = runtime.env.models.policy
    report = {"precision": {"unet": str(policy.unet_dtype), "text": str(policy.text_dtype),
                            "vae": str(policy.vae_dtype)}, "runs": []}
    plan = [("plain", workflow(steps, size, prefix=config))]
    if lora_run:
        plan = [("no LoRA", workflow(steps, size, seed=1, prefix="nolora")),
                ("LoRA 1.0", workflow(steps, size, seed=1, lora=1.0, prefix="lora")),
                ("LoRA 1.0, new seed", workflow(steps, size, seed=2, lora=1.0, prefix="lora2"))]
    overall_peak = high_water_gb()   # start-up; each node's own peak is read before each reset
    for name, prompt in plan:
        marks: list[tuple[float, str, object]] = []
        node_peaks: dict[str, float] = {}
        current = [None]

        def emit(event, data, marks=marks, node_peaks=node_peaks, current=current):
            if event == "executing":
                marks.append((time.perf_counter(), "node", data.get("node")))
                if current[0] is not None:
                    node_peaks[current[0]] = max(node_peaks.get(current[0], 0.0), high_water_gb())
                current[0] = data.get("node")
                reset_high_water()
            elif event == "progress" and data.get("node") == "3":
                marks.append((time.perf_counter(), "step", data.get("value")))

        started = time.perf_counter()
        result = runtime.executor.run(prompt, emit=emit)
        ended = time.perf_counter()
        if current[0] is not None:
            node_peaks[current[0]] = max(node_peaks.get(current[0], 0.0), high_water_gb())
        if not result.ok:
            raise SystemExit(f"{name}: {result.error}")
        nodes, steps_at = {}, [t for t, kind, _ in marks if kind == "step"]
        starts = [(t, n) for t, kind, n in marks if kind == "node" and n is not None] + [(ended, None)]
        for (t, node), (t_next, _) in pairwise(starts):
            nodes[node] = nodes.get(node, 0.0) + t_next - t
        gaps = [b - a for a, b in pairwise(steps_at)]
        report["runs"].append({"name": name, "run_s": ended - started, "nodes": nodes, "node_peak_gb": node_peaks,
                               "s_per_step": sum(gaps) / len(gaps) if gaps else None,
                               "first_step_s": steps_at[0] - next(t for t, n in starts if n == "3") if steps_at else None})
        overall_peak = max([overall_peak, *node_peaks.values()])
    report["peak_rss_gb"] = overall_peak
    report["images"] = sorted(str(p) for p in (base / "output").glob("*.png"))
    out.write_text(json.dumps(report))


def report_path(base: Path, config: str, lora_run: bool) -> Path:
    return base / f"{config}{'-lora' if lora_run else ''}.json"


def load_child(config: str, base: Path, out: Path) -> None:
    """Only CheckpointLoaderSimple's loading, in a bare process: RSS before, peak, after."""
    from app.args import parse_args
    from diffusion.device import DevicePolicy
    from diffusion.handles import open_checkpoint
    from diffusion.model_management import ModelManagement

    policy = DevicePolicy.from_args(parse_args(["--base-directory", str(base), *CONFIGS[config]]))
    reset_high_water()
    before = high_water_gb()
    started = time.perf_counter()
    loaded = open_checkpoint(base / "models" / "checkpoints" / CHECKPOINT, ModelManagement(policy), [])
    took = time.perf_counter() - started
    out.write_text(json.dumps({"before": before, "peak": high_water_gb(), "seconds": took,
                               "unet": str(policy.unet_dtype), "alive": loaded.model is not None}))


def machine_env() -> dict[str, str]:
    """This environment without LATENTGRAPH_CPU_BF16: a child process takes the machine's own
    precision probe."""
    from diffusion.device import CPU_BF16_ENV

    return {k: v for k, v in os.environ.items() if k != CPU_BF16_ENV}


def run_config(config: str, base: Path, steps: int, size: int, lora_run: bool = False,
               load_only: bool = False) -> dict:
    out = report_path(base, config, lora_run)
    env = machine_env()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", config, "--base", str(base), "--steps", str(steps),
                             "--size", str(size), *(["--lora"] if lora_run else []),
                             *(["--load-only"] if load_only else [])], cwd=str(ROOT), env=env)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{config}: the benchmark process failed (status {status})")
    report = json.loads(out.read_text())
    # peak RSS comes from the child: resetting VmHWM per node also resets what wait4 would report
    report.update(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime)
    return report


def psnr(a: Path, b: Path) -> float:
    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.float64)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


# -- RSS after POST /free -------------------------------------------------------------------------


def rss_gb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def free_run(base: Path, steps: int, size: int) -> dict:
    from tests.server_helpers import LiveServer, call

    server = LiveServer(base, packs=()).start(timeout=120)
    try:
        time.sleep(2)
        fresh = rss_gb(server.proc.pid)
        status, body = call(server.url + "/prompt", "POST", {"prompt": workflow(steps, size, prefix="free")})
        assert status == 200, body
        prompt_id = body["prompt_id"]
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            _, history = call(server.url + f"/history/{prompt_id}")
            if history and prompt_id in history:
                break
            time.sleep(1)
        else:
            raise SystemExit("the server did not finish the workflow")
        assert history[prompt_id]["status"]["status_str"] == "success", history[prompt_id]["status"]
        after_run = rss_gb(server.proc.pid)
        call(server.url + "/free", "POST", {"unload_models": True, "free_memory": True})
        time.sleep(3)   # /free is handled by the worker between prompts
        after_free = rss_gb(server.proc.pid)
    finally:
        server.stop()
    return {"fresh": fresh, "after_run": after_run, "after_free": after_free}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="default,fp32", help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "lg-bench")
    parser.add_argument("--lora", action="store_true", help="the LoRA run (default precision)")
    parser.add_argument("--free", action="store_true", help="RSS after POST /free against a fresh server")
    parser.add_argument("--load-only", action="store_true",
                        help="only load the checkpoint (per configuration, a fresh process): RSS before and peak")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child and args.load_only:
        load_child(args.child, args.base, report_path(args.base, args.child, False))
        return 0
    if args.child:
        child(args.child, args.base, args.steps, args.size, args.lora, report_path(args.base, args.child, args.lora))
        return 0

    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average at start "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    reports = {}
    with tempfile.TemporaryDirectory(prefix="lg-bench-") as tmp:
        for config in [c for c in args.configs.split(",") if c]:
            base = Path(tmp) / config
            prepare_base(base, args.models_dir)
            if args.load_only:
                r = run_config(config, base, args.steps, args.size, load_only=True)
                print(f"{config} ({r['unet'].removeprefix('torch.')} UNet): loading took {r['seconds']:.1f} s, RSS "
                      f"{r['before']:.2f} GB before, peak {r['peak']:.2f} GB (load average "
                      f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})", flush=True)
                continue
            reports[config] = r = run_config(config, base, args.steps, args.size)
            run = r["runs"][0]
            nodes = run["nodes"]
            load_s = nodes.get("4", 0.0)
            text_s = nodes.get("6", 0.0) + nodes.get("7", 0.0)
            target_wall, target_rss = TARGETS[config]
            precision = ", ".join(f"{part} {dtype.removeprefix('torch.')}" for part, dtype in r["precision"].items())
            print(f"\n{config} ({precision}):"
                  f"\n  wall {r['wall_s']:.1f} s ({r['wall_s'] / COMFYUI_WALL_S:.2f}x ComfyUI's {COMFYUI_WALL_S} s; "
                  f"target {target_wall}x), CPU {r['cpu_s']:.1f} s, peak RSS {r['peak_rss_gb']:.2f} GB "
                  f"(target {target_rss} GB)"
                  f"\n  load {load_s:.1f} s, text encoding {text_s:.1f} s, sampling {nodes.get('3', 0.0):.1f} s "
                  f"({run['s_per_step']:.2f} s/step after a first step of {run['first_step_s']:.1f} s), "
                  f"decode {nodes.get('8', 0.0):.1f} s, save {nodes.get('9', 0.0):.2f} s", flush=True)
            peaks = run["node_peak_gb"]
            print("  peak RSS while " + ", ".join(f"{label} {peaks[node]:.2f} GB" for node, label in
                                                 [("4", "loading"), ("6", "encoding"), ("3", "sampling"),
                                                  ("8", "decoding")] if node in peaks), flush=True)
            print(f"  load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        if "default" in reports and "fp32" in reports:
            [a], [b] = reports["default"]["images"], reports["fp32"]["images"]
            print(f"\ndefault vs --force-fp32 image, same seed: PSNR {psnr(Path(a), Path(b)):.1f} dB", flush=True)
        if "fp32" in reports and "fp32-budget" in reports:
            [a], [b] = reports["fp32"]["images"], reports["fp32-budget"]["images"]
            print(f"fp32 vs fp32-budget image: PSNR {psnr(Path(a), Path(b)):.1f} dB (inf: identical)", flush=True)
        if args.lora:
            base = Path(tmp) / "lora"
            prepare_base(base, args.models_dir, with_lora=True)
            r = run_config("default", base, args.steps, args.size, lora_run=True)
            print(f"\nLoRA run (one process, default precision): wall {r['wall_s']:.1f} s, "
                  f"peak RSS {r['peak_rss_gb']:.2f} GB")
            plain = r["runs"][0]
            for run in r["runs"]:
                print(f"  {run['name']}: KSampler {run['nodes'].get('3', 0.0):.1f} s, {run['s_per_step']:.2f} s/step "
                      f"({run['s_per_step'] / plain['s_per_step']:.3f}x without), first step {run['first_step_s']:.1f} s, "
                      f"LoraLoader {run['nodes'].get('10', 0.0):.2f} s", flush=True)
            print(f"  load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        if args.free:
            base = Path(tmp) / "free"
            prepare_base(base, args.models_dir)
            r = free_run(base, args.steps, args.size)
            print(f"\nserver RSS: fresh {r['fresh']:.2f} GB, after the workflow {r['after_run']:.2f} GB, after POST /free "
                  f"{r['after_free']:.2f} GB ({(r['after_free'] - r['fresh']) * 1000:+.0f} MB vs fresh; target within 300 MB)")
            print(f"  load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
