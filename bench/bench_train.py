"""Training throughput on this machine, in images per second, fp32 and bf16.

    python bench/bench_train.py [--threads N] [--steps N]

Two jobs, each timed over --steps steps after two warm-up steps, best and mean of the steps:

* denoiser: one step of the built-in model's stage 3 (UNet + CLIP text encoder trained together
  from scratch, batch 32 of 64x64 pictures = 8x8 latents; diffusion.training.scratch.Recipe);
* LoRA: one Train LoRA step (rank 8, batch 4, gradient checkpointing on, as the node's defaults
  but batch 4) on the shipped built-in model, or on a random model of the same shape when the
  file is missing.

"bf16" is autocast to bfloat16 with float32 weights and optimizer state (the LoRA job also keeps
its adapters in bf16, the node's default); "fp32" is float32 throughout.
"""
from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from diffusion.model_sampling import ModelSamplingDiscrete
from diffusion.training import shapes
from diffusion.training.loop import autocast, cpu_has_bf16, denoising_loss
from diffusion.training.scratch import CaptionTokens, Recipe, text_context
from diffusion.unet import UNetModel

BUILTIN = REPO / "models_builtin" / "latentgraph-shapes-64.safetensors"


def timed(step, steps: int) -> list[float]:
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def denoiser_job(dtype: torch.dtype, batch: int = 32):
    recipe = Recipe()
    torch.manual_seed(0)
    unet = UNetModel(recipe.unet_config()).train()
    text = recipe.text_encoder().train().requires_grad_(True)
    params = [*unet.parameters(), *text.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    tokens = CaptionTokens(text)
    rng = random.Random(0)
    scenes = shapes.training_scenes()
    gen = torch.Generator().manual_seed(0)
    ms = ModelSamplingDiscrete("eps")
    latents = torch.randn(batch, 4, 8, 8)
    device = torch.device("cpu")

    def step():
        ids = tokens.batch([shapes.sample_caption(rng.choice(scenes), rng) for _ in range(batch)], device)
        with autocast(device, dtype):
            loss = denoising_loss(unet, ms, latents, text_context(text, ids), gen, min_snr_gamma=5.0).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step, batch


def lora_job(dtype: torch.dtype, batch: int = 4):
    from diffusion.device import DevicePolicy
    from diffusion.handles import open_checkpoint
    from diffusion.model_management import ModelManagement
    from diffusion.training.lora_train import LoraSettings, LoraTrainer

    path = BUILTIN
    if not path.is_file():
        from diffusion.training.scratch import checkpoint_state_dict, write_checkpoint
        from diffusion.vae import AutoencoderKL
        recipe = Recipe()
        path = Path("/tmp/bench_train_random.safetensors")
        write_checkpoint(path, checkpoint_state_dict(UNetModel(recipe.unet_config()), AutoencoderKL(recipe.vae_config()),
                                                     recipe.text_encoder()), {})
    models = open_checkpoint(path, ModelManagement(DevicePolicy.choose(cpu=True)), [])
    latents = torch.randn(16, 4, 8, 8) * 5
    positive = models.clip.encode_from_tokens_scheduled(
        models.clip.tokenize("a small red circle at the top left on a blue background"))
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    trainer = LoraTrainer(models.model, latents, positive,
                          LoraSettings(steps=10 ** 6, batch_size=batch, training_dtype=name, lora_dtype=name))
    return (lambda: trainer.step()), batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} thread(s), AVX512-BF16: {cpu_has_bf16()}")
    print("| job | dtype | images/s (best step) | images/s (mean) | s/step (best) |")
    print("|---|---|---:|---:|---:|")
    for job_name, job in (("denoiser from scratch, batch 32", denoiser_job), ("LoRA, batch 4", lora_job)):
        for dtype in (torch.float32, torch.bfloat16):
            step, batch = job(dtype)
            times = timed(step, args.steps)
            best, mean = min(times), statistics.mean(times)
            print(f"| {job_name} | {'bf16' if dtype == torch.bfloat16 else 'fp32'} | {batch / best:.1f} | "
                  f"{batch / mean:.1f} | {best:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
