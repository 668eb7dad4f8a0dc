"""One SD1.5-architecture UNet step (512x512, batch 2 as under CFG): ours next to diffusers.

    python bench/bench_unet_step.py                    # CPU: fp32 and bf16 weights, 2 timed steps each
    python bench/bench_unet_step.py --repeats 3 --dtypes bf16
    python bench/bench_unet_step.py --size 256         # quicker

Random weights (seeded) shared by both models: diffusers' model is filled from ours through
diffusers' own original-to-diffusers converter with `assign=True`, so the weights exist once.
Each dtype runs in a fresh process; within it the two models alternate step by step, so a load
spike from other processes hits both alike. Reported per model: best and mean wall time, process
CPU time (less sensitive to other load on a shared machine) and the step's peak memory above what
was resident before it (CPU: getrusage maxrss after resetting the high-water mark; CUDA:
torch.cuda.max_memory_allocated). fp16 is only used on CUDA.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
IMPLS = ("ours", "diffusers")


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    # Writing 5 to clear_refs lowers the RSS high-water mark (and with it ru_maxrss) to the
    # current RSS, so each step's peak is measured on its own.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def build_pair(dtype: torch.dtype, device: str):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from diffusion.unet import UNetConfig, UNetModel
    from tests.models_tiny import diffusers_unet_config

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # weights are born in the benchmark dtype: no fp32 copy in memory
    try:
        with torch.device(device):
            ours = UNetModel(UNetConfig.sd15()).eval()
    finally:
        torch.set_default_dtype(previous)
    dcfg = diffusers_unet_config(ours.config)
    with torch.device("meta"):
        theirs = UNet2DConditionModel(**dcfg)
    original = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(convert_ldm_unet_checkpoint(original, dcfg), strict=True, assign=True)
    return ours, theirs.eval()


def child(dtype_name: str, device: str, size: int, batch: int, repeats: int) -> dict:
    torch.set_grad_enabled(False)
    dtype = DTYPES[dtype_name]
    ours, theirs = build_pair(dtype, device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, size // 8, size // 8, generator=gen).to(device, dtype)
    t = torch.full((batch,), 500.0, device=device)
    ctx = torch.randn(batch, 77, 768, generator=gen).to(device, dtype)
    steps = {"ours": lambda: ours(x, t, ctx), "diffusers": lambda: theirs(x, t, ctx).sample}
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    outputs = {}
    for impl in IMPLS:  # warm-up: kernel choice, allocator growth, our one-off NHWC weight layout
        outputs[impl] = steps[impl]().float()
        sync()
    max_diff = (outputs["ours"] - outputs["diffusers"]).abs().max().item()
    del outputs
    results = {impl: {"wall": [], "cpu": [], "peak_mb": 0.0} for impl in IMPLS}
    for _ in range(repeats):
        for impl in IMPLS:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated() / 2**20
            else:
                base = current_rss_mb()
                reset_peak_rss()
            wall, cpu = time.perf_counter(), time.process_time()
            out = steps[impl]()
            sync()
            r = results[impl]
            r["wall"].append(time.perf_counter() - wall)
            r["cpu"].append(time.process_time() - cpu)
            peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            r["peak_mb"] = max(r["peak_mb"], peak - base)
            del out
    resident = torch.cuda.memory_allocated() / 2**20 if cuda else current_rss_mb()
    return {"dtype": dtype_name, "results": results, "max_abs_diff": max_diff, "resident_mb": resident}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default=None, help="comma list of fp32,bf16,fp16 (fp16 only on CUDA)")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (latent = size/8)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", metavar="DTYPE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.device, args.size, args.batch, args.repeats)))
        return

    cuda = args.device.startswith("cuda")
    dtypes = (args.dtypes or ("fp32,fp16" if cuda else "fp32,bf16")).split(",")
    if not cuda and "fp16" in dtypes:
        sys.exit("fp16 on the CPU is not benchmarked (slow, emulated); use fp32 or bf16")
    print(f"SD1.5 UNet step, {args.size}x{args.size} (latent {args.size // 8}), batch {args.batch}, "
          f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.repeats} timed step(s) each after 1 warm-up, models alternating")
    print(f"{'dtype':6} {'impl':10} {'best s':>8} {'mean s':>8} {'cpu s':>8} {'step peak MB':>13}")
    for dtype_name in dtypes:
        cmd = [sys.executable, __file__, "--child", dtype_name, "--device", args.device, "--size", str(args.size),
               "--batch", str(args.batch), "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            sys.exit(f"{dtype_name} run failed:\n{proc.stderr[-3000:]}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        res = report["results"]
        for impl in IMPLS:
            r = res[impl]
            print(f"{dtype_name:6} {impl:10} {min(r['wall']):8.2f} {statistics.mean(r['wall']):8.2f} "
                  f"{min(r['cpu']):8.2f} {r['peak_mb']:13.0f}")
        ours, theirs = res["ours"], res["diffusers"]
        print(f"{dtype_name:6} ours/diffusers: best wall x{min(ours['wall']) / min(theirs['wall']):.2f}, "
              f"cpu x{min(ours['cpu']) / min(theirs['cpu']):.2f}, "
              f"peak memory x{ours['peak_mb'] / max(theirs['peak_mb'], 1):.2f}; "
              f"max |ours - diffusers| {report['max_abs_diff']:.2e}; resident {report['resident_mb']:.0f} MB")


if __name__ == "__main__":
    main()
