"""Our image against ComfyUI's, side by side, on real-size random-weight checkpoints.

    python bench/comfyui_parity.py                              # SD1.5 512, SD2.1 768, SDXL 1024
    python bench/comfyui_parity.py --families sd21 --steps 4

For each family, bench/real_size_models.py writes a checkpoint in the released file's layout
(fp16, written once under --models-dir). ComfyUI's default graph, with a SaveLatent beside the
SaveImage, then runs twice on it: in ComfyUI itself (`main.py --cpu` of the checkout at
--comfyui, through its HTTP API; it computes fp32 on the CPU) and in ours as a user runs a saved
workflow (`main.py --force-fp32 run`). Both on this machine's threads, one after the other. It
prints each side's prompt time, whether the latents are equal bit for bit (else their largest
difference) and how many PNG values differ. Exit status 1 when any family differs.

Needs a ComfyUI checkout and its Python (defaults: /work/ref, where
../shared/tools/comfyui-reference puts it; environment variables COMFYUI and COMFYUI_PYTHON), and
about 16 GB of RAM for SDXL.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import bench_pipeline  # noqa: E402
from bench.comfyui_server import ComfyUIServer  # noqa: E402
from bench.real_size_models import FAMILIES, write_checkpoint  # noqa: E402

SIZES = {"sd15": 512, "sd21": 768, "sdxl": 1024}   # each family's native resolution


def workflow(checkpoint: str, size: int, steps: int, prefix: str) -> dict:
    """bench_pipeline's default graph for `checkpoint`, saving the latent too."""
    prompt = bench_pipeline.workflow(steps, size, seed=7, prefix=prefix, checkpoint=checkpoint)
    prompt["10"] = {"class_type": "SaveLatent", "inputs": {"filename_prefix": f"latents/{prefix}", "samples": ["3", 0]}}
    return prompt


def base_with(base: Path, checkpoint: Path) -> Path:
    folder = base / "models" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / checkpoint.name).symlink_to(checkpoint)
    return base


def run_comfyui(base: Path, prompt: dict, args) -> float:
    with ComfyUIServer(base, Path(args.comfyui), args.comfyui_python) as server:
        started = time.perf_counter()
        entry = server.run(prompt)
        took = time.perf_counter() - started
    if entry["status"]["status_str"] != "success":
        raise SystemExit(f"ComfyUI failed: {json.dumps(entry['status'])[:2000]}")
    return took


def run_ours(base: Path, prompt: dict) -> float:
    path = base / "workflow.json"
    path.write_text(json.dumps(prompt))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), "--base-directory", str(base), "--force-fp32",
                           "run", str(path)], cwd=str(ROOT), env=bench_pipeline.machine_env(), capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"ours failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return took


def compare(theirs: Path, ours: Path, prefix: str) -> tuple[bool, str]:
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    name = f"{prefix}_00001_"
    a = load_file(str(theirs / "output" / "latents" / f"{name}.latent"))["latent_tensor"]
    b = load_file(str(ours / "output" / "latents" / f"{name}.latent"))["latent_tensor"]
    x = np.asarray(Image.open(theirs / "output" / f"{name}.png").convert("RGB"), dtype=np.int16)
    y = np.asarray(Image.open(ours / "output" / f"{name}.png").convert("RGB"), dtype=np.int16)
    same = torch.equal(a, b) and np.array_equal(x, y)
    latent = "latent equal" if torch.equal(a, b) else \
        f"latent differs by up to {(a - b).abs().max().item():.3g} (values up to {a.abs().max().item():.3g})"
    pixels = f"{int((x != y).sum())} of {x.size} PNG values differ (by up to {int(np.abs(x - y).max())})"
    return same, f"{latent}; {pixels}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default="sd15,sd21,sdxl", help="comma-separated: " + ", ".join(FAMILIES))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "lg-bench")
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI", "/work/ref/ComfyUI"))
    parser.add_argument("--comfyui-python", default=os.environ.get("COMFYUI_PYTHON", "/work/ref/venv/bin/python"))
    args = parser.parse_args()

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    differ = 0
    for family in [f for f in args.families.split(",") if f]:
        checkpoint = write_checkpoint(args.models_dir / f"{family}_random_fp16.safetensors", family, torch.float16)
        size, prefix = SIZES[family], f"parity_{family}"
        prompt = workflow(checkpoint.name, size, args.steps, prefix)
        with tempfile.TemporaryDirectory(prefix="lg-parity-") as tmp:
            theirs = base_with(Path(tmp) / "comfyui", checkpoint)
            ours = base_with(Path(tmp) / "ours", checkpoint)
            their_s = run_comfyui(theirs, prompt, args)
            our_s = run_ours(ours, prompt)
            same, detail = compare(theirs, ours, prefix)
        differ += not same
        print(f"{family} {size}x{size}, {args.steps} euler steps, CFG {prompt['3']['inputs']['cfg']:g}: {'SAME' if same else 'DIFFERENT'}: {detail}; "
              f"ComfyUI's prompt {their_s:.1f} s, ours (whole `main.py run`, start-up included) {our_s:.1f} s",
              flush=True)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
