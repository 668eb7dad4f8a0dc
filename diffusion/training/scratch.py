"""Train the built-in model from nothing: a small latent diffusion model in the SD1.x file layout.

    python -m diffusion.training.scratch --out models_builtin/latentgraph-shapes-64.safetensors --seed 0

Three stages, each resumable from the work folder (`--work`, default: beside the output):

1. the VAE (the SD KL autoencoder at 32 channels, four levels, so 8 pixels per latent cell) on
   freshly drawn shapes (`diffusion.training.shapes`), then a fixed linear change of its latent
   coordinates folded into `quant_conv` / `post_quant_conv` (see `normalise_latent_space`);
2. a fixed set of drawings encoded once to latents;
3. the UNet (SD1 structure at 32 channels, conv proj_in, 8 heads) and the CLIP text encoder (the
   SD1 CLIP-L layout at `--text-width` channels), trained together on the denoising loss of
   `diffusion.training.loop`, with captions re-drawn for every step and EMA weights kept.

The file written holds `model.diffusion_model.*`, `first_stage_model.*` and
`cond_stage_model.transformer.text_model.*` under their SD1 names, in float16 storage; the loader
reads it as an SD1 checkpoint (eps prediction, SD1 latent scale, last CLIP layer). Nothing here
is specific to this data set except stage 2's drawing and the captions.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffusion import text_encoders
from diffusion.latent_formats import SD15
from diffusion.model_sampling import ModelSamplingDiscrete
from diffusion.training import shapes
from diffusion.training.loop import EMA, autocast, cosine_lr, denoising_loss, seed_everything, training_dtype
from diffusion.unet import UNET_PREFIX, UNetConfig, UNetModel
from diffusion.vae import AutoencoderKL, VAEConfig

VAE_PREFIX = "first_stage_model."


@dataclass
class Recipe:
    seed: int = 0
    # VAE
    vae_channels: int = 32
    vae_mult: tuple[int, ...] = (1, 1, 2, 2)
    vae_steps: int = 3000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_noise: float = 0.05
    vae_foreground: float = 3.0
    vae_edges: float = 0.5
    # data
    dataset_size: int = 30000
    # denoiser
    unet_channels: int = 32
    unet_mult: tuple[int, ...] = (1, 2, 3)
    unet_res_blocks: int = 2
    text_width: int = 64
    text_layers: int = 2
    steps: int = 4000
    batch: int = 32
    lr: float = 8e-4
    warmup: int = 200
    min_snr_gamma: float = 5.0
    # strengths of the smooth noise added at 4x4, 2x2 and 1x1 latent cells (loop.coarse_noise):
    # without it the model takes background and layout from the seed, not the prompt
    coarse_noise: tuple[float, ...] = (1.0, 0.7, 0.6)
    # loss weight times 1 + (sigma / high_noise_sigma)^2, so that layout errors at high noise count
    high_noise_sigma: float = 4.0
    ema_decay: float = 0.999
    save_every: int = 250
    precision: str = "auto"

    def unet_config(self) -> UNetConfig:
        return UNetConfig(model_channels=self.unet_channels, channel_mult=self.unet_mult,
                          num_res_blocks=self.unet_res_blocks, transformer_depth=1, transformer_depth_middle=1,
                          context_dim=self.text_width, num_heads=8)

    def vae_config(self) -> VAEConfig:
        return VAEConfig(base_channels=self.vae_channels, channel_mult=self.vae_mult, num_res_blocks=1)

    def text_encoder(self) -> text_encoders.SD1TextEncoder:
        config = text_encoders.text_config(self.text_width, self.text_layers, act="quick_gelu")
        return text_encoders.SD1TextEncoder({"l": config})


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def pixels(batch: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in -1..1."""
    # contiguous NCHW: a permuted (NHWC-strided) input sends every convolution after it down
    # oneDNN's channels-last path, which trains this VAE at half the speed on the CPU
    return (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1.0).contiguous()


# --- stage 1: the autoencoder ---------------------------------------------------------------

def reconstruction_loss(out: torch.Tensor, x: torch.Tensor, foreground: float, edges: float) -> torch.Tensor:
    """MSE + 0.5 L1, with pixels away from the picture's background weighted 1 + `foreground`,
    plus an L1 on horizontal and vertical pixel differences weighted `edges`.

    A shape covers 4-15% of a picture: unweighted, the background's many pixels set the loss and
    an autoencoder learns flat colours with blobs; the weight and the edge term pay for outlines.
    The background is each picture's per-channel median.
    """
    background = x.flatten(2).median(dim=2).values[:, :, None, None]
    weight = 1 + foreground * ((x - background).abs().amax(1, keepdim=True) > 0.1).float()
    diff = out - x
    loss = (diff.pow(2) * weight).mean() + 0.5 * (diff.abs() * weight).mean()
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]
    return loss + edges * ((dx(out) - dx(x)).abs().mean() + (dy(out) - dy(x)).abs().mean())


def train_vae(recipe: Recipe, device: torch.device, dtype: torch.dtype) -> AutoencoderKL:
    """The autoencoder, trained as a deterministic one with a little latent noise (5% of the
    latents' spread) so that nearby latents decode alike; the KL posterior's variance half of
    `quant_conv` is left untrained (inference reads the mean only)."""
    seed_everything(recipe.seed)
    vae = AutoencoderKL(recipe.vae_config()).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    scenes = shapes.training_stream(recipe.seed + 11)
    draw_rng = random.Random(recipe.seed + 12)
    gen = torch.Generator().manual_seed(recipe.seed + 13)
    started, seen = time.perf_counter(), 0.0
    for step in range(recipe.vae_steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, recipe.vae_steps, recipe.vae_lr, warmup=100)
        x = pixels(shapes.make_batch([next(scenes) for _ in range(recipe.vae_batch)], draw_rng)).to(device)
        with autocast(device, dtype):
            mean = vae.encode_mean(x).float()
        z = mean + torch.randn(mean.shape, generator=gen).to(device) * recipe.vae_noise * mean.detach().std()
        with autocast(device, dtype):
            out = vae.decode_raw(z).float()
        rec = reconstruction_loss(out, x, recipe.vae_foreground, recipe.vae_edges)
        opt.zero_grad(set_to_none=True)
        rec.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        seen = 0.98 * seen + 0.02 * rec.item() if step else rec.item()
        if step % 50 == 0 or step == recipe.vae_steps - 1:
            elapsed = time.perf_counter() - started
            log(f"vae step {step + 1}/{recipe.vae_steps} loss {seen:.5f} ({elapsed / (step + 1):.2f} s/step)")
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def judge_reconstructions(vae: AutoencoderKL, recipe: Recipe, device, dtype, count: int = 96) -> dict:
    """How many pictures survive encoding and decoding with their colour, background and shape
    (shapes.judge): an upper bound for what the diffusion model can show through this VAE."""
    rng = random.Random(recipe.seed + 51)
    scenes = [rng.choice(shapes.all_scenes()) for _ in range(count)]
    images = pixels(shapes.make_batch(scenes, rng))
    decoded = vae.decode(encode(vae, images, device, dtype).to(device)).float().cpu()
    decoded = ((decoded + 1) * 127.5).clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()
    verdicts = [shapes.judge(img, scene) for img, scene in zip(decoded, scenes)]
    return {what: float(np.mean([getattr(v, what) for v in verdicts]))
            for what in ("colour_ok", "background_ok", "shape_ok", "all_ok")}


@torch.no_grad()
def encode(vae: AutoencoderKL, images: torch.Tensor, device, dtype, batch: int = 64) -> torch.Tensor:
    out = []
    for i in range(0, images.shape[0], batch):
        with autocast(device, dtype):
            out.append(vae.encode_mean(images[i:i + batch].to(device)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def normalise_latent_space(vae: AutoencoderKL, recipe: Recipe, device, dtype, samples: int = 2048) -> dict:
    """Re-express the latent in coordinates a diffusion model and a preview want, exactly.

    Any invertible affine map T of the latent can be folded into the encoder's last 1x1 conv and
    undone in the decoder's first, leaving reconstructions unchanged. T is chosen so that latents
    times SD1's scale factor (0.18215) have zero mean and unit covariance, rotated so SD1's
    published latent-to-RGB preview factors give the picture's colours as nearly as a rotation
    allows: previews then show the right colours, as with a real SD1 model.
    """
    rng = random.Random(recipe.seed + 21)
    stream = shapes.training_stream(recipe.seed + 22)
    batch = [next(stream) for _ in range(samples)]
    images = pixels(shapes.make_batch(batch, rng))
    lat = encode(vae, images, device, dtype)                      # [N, 4, h, w]
    c = lat.shape[1]
    flat = lat.permute(0, 2, 3, 1).reshape(-1, c).double()
    mean = flat.mean(0)
    cov = torch.cov((flat - mean).T)
    evals, evecs = torch.linalg.eigh(cov)
    whiten = evecs @ torch.diag(evals.clamp_min(1e-8).rsqrt()) @ evecs.T   # symmetric whitening
    u = (flat - mean) @ whiten.T                                         # unit covariance
    # Target colours: the picture averaged over each latent cell, in -1..1.
    f = vae.config.downscale
    rgb = F.avg_pool2d(images, f).permute(0, 2, 3, 1).reshape(-1, 3).double()
    factors = torch.tensor(SD15.latent_rgb_factors, dtype=torch.float64)   # [4, 3]
    rotation = _best_rotation(u, rgb, factors)
    scale = SD15().scale_factor
    transform = rotation @ whiten / scale            # file latent = transform @ (old latent - mean)
    inverse = torch.linalg.inv(transform)
    q, pq = vae.quant_conv, vae.post_quant_conv
    wq, bq = q.weight[:c, :, 0, 0].double(), q.bias[:c].double()
    q.weight[:c, :, 0, 0] = (transform @ wq).to(q.weight.dtype)
    q.bias[:c] = (transform @ (bq - mean)).to(q.bias.dtype)
    wp, bp = pq.weight[:, :, 0, 0].double(), pq.bias.double()
    pq.weight[:, :, 0, 0] = (wp @ inverse).to(pq.weight.dtype)
    pq.bias[:] = (bp + wp @ mean).to(pq.bias.dtype)
    check = encode(vae, images[:256], device, dtype) * scale
    fit = (u @ rotation.T @ factors - rgb).pow(2).mean().sqrt().item()
    return {"latent_mean": check.mean().item(), "latent_std": check.std().item(), "preview_rms": fit}


def _best_rotation(u: torch.Tensor, rgb: torch.Tensor, factors: torch.Tensor, steps: int = 500) -> torch.Tensor:
    """Orthogonal R minimising |(R u) @ factors - rgb|^2 (+ a free colour offset), by gradient
    descent on R = matrix_exp(A - A^T), which stays orthogonal."""
    a = torch.zeros(u.shape[1], u.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([a, bias], lr=0.05)
    with torch.enable_grad():
        for _ in range(steps):
            r = torch.linalg.matrix_exp(a - a.T)
            loss = ((u @ r.T) @ factors + bias - rgb).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return torch.linalg.matrix_exp(a - a.T).detach()


# --- stage 2: the data set as latents ---------------------------------------------------------

def encode_dataset(vae: AutoencoderKL, recipe: Recipe, device, dtype) -> tuple[torch.Tensor, list]:
    stream = shapes.training_stream(recipe.seed + 31)
    rng = random.Random(recipe.seed + 32)
    scenes = [next(stream) for _ in range(recipe.dataset_size)]
    chunks = []
    for i in range(0, len(scenes), 512):
        chunks.append(encode(vae, pixels(shapes.make_batch(scenes[i:i + 512], rng)), device, dtype))
        if i % 8192 == 0:
            log(f"encoded {i + len(chunks[-1])}/{len(scenes)} drawings")
    return torch.cat(chunks), scenes


# --- stage 3: UNet and text encoder -----------------------------------------------------------

class CaptionTokens:
    """Caption -> [77] token ids as the SD1 text encoder pads them, cached (captions repeat)."""

    def __init__(self, encoder: text_encoders.TextEncoder):
        self.encoder = encoder
        self.cache: dict[str, list[int]] = {}

    def __call__(self, caption: str) -> list[int]:
        ids = self.cache.get(caption)
        if ids is None:
            (chunk, *more) = self.encoder.tokenize(caption)["l"]
            if more:
                raise ValueError(f"caption longer than one 77-token window: {caption!r}")
            ids = self.cache[caption] = [int(t) for t, _ in chunk]
        return ids

    def batch(self, captions: list[str], device) -> torch.Tensor:
        return torch.tensor([self(c) for c in captions], dtype=torch.long, device=device)


def text_context(encoder: text_encoders.TextEncoder, ids: torch.Tensor) -> torch.Tensor:
    """SD1's conditioning with gradients: CLIP's last layer after the final norm, [B, 77, D]."""
    return encoder.towers["l"].text(ids)[0]


def train_denoiser(recipe: Recipe, latents: torch.Tensor, scenes: list, device, dtype, work: Path,
                   max_seconds: float | None = None):
    """(unet, text encoder) with EMA weights, after `recipe.steps` steps (resuming from `work`)."""
    seed_everything(recipe.seed + 40)
    unet = UNetModel(recipe.unet_config()).to(device).train()
    text = recipe.text_encoder().to(device).train().requires_grad_(True)
    params = [*unet.parameters(), *text.parameters()]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.01)
    ema_unet, ema_text = EMA(unet, recipe.ema_decay), EMA(text, recipe.ema_decay)
    ms = ModelSamplingDiscrete("eps")
    scale = SD15().scale_factor
    tokens = CaptionTokens(text)
    gen = torch.Generator().manual_seed(recipe.seed + 41)
    rng = random.Random(recipe.seed + 42)
    state_path = work / "denoiser_state.pt"
    step, history = 0, []
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        unet.load_state_dict(state["unet"])
        text.load_state_dict(state["text"])
        opt.load_state_dict(state["opt"])
        ema_unet.load_state_dict(state["ema_unet"])
        ema_text.load_state_dict(state["ema_text"])
        gen.set_state(state["gen"])
        rng.setstate(state["rng"])
        step, history = state["step"], state["history"]
        log(f"resumed the denoiser at step {step}")
    n = latents.shape[0]
    started, smooth = time.perf_counter(), None
    first_step = step
    while step < recipe.steps:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, recipe.steps, recipe.lr, warmup=recipe.warmup)
        index = torch.randint(0, n, (recipe.batch,), generator=gen)
        x0 = latents[index].to(device) * scale
        captions = [shapes.sample_caption(scenes[i], rng) for i in index.tolist()]
        ids = tokens.batch(captions, device)
        with autocast(device, dtype):
            context = text_context(text, ids)
            result = denoising_loss(unet, ms, x0, context, gen, min_snr_gamma=recipe.min_snr_gamma,
                                    coarse=recipe.coarse_noise, high_noise_sigma=recipe.high_noise_sigma)
        opt.zero_grad(set_to_none=True)
        result.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet, step)
        ema_text.update(text, step)
        value = result.per_sample.mean().item()
        smooth = value if smooth is None else 0.99 * smooth + 0.01 * value
        history.append(value)
        step += 1
        if step % 50 == 0 or step == recipe.steps:
            per_step = (time.perf_counter() - started) / (step - first_step)
            log(f"denoiser step {step}/{recipe.steps} loss {smooth:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({per_step:.2f} s/step, {(recipe.steps - step) * per_step / 60:.0f} min left)")
        if step % recipe.save_every == 0 or step == recipe.steps:
            state = {"unet": unet.state_dict(), "text": text.state_dict(), "opt": opt.state_dict(),
                     "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(), "gen": gen.get_state(),
                     "rng": rng.getstate(), "step": step, "history": history}
            torch.save(state, state_path.with_suffix(".tmp"))
            os.replace(state_path.with_suffix(".tmp"), state_path)
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            break
    unet.load_state_dict({k: v.to(unet.state_dict()[k].dtype) for k, v in ema_unet.state_dict().items()},
                         strict=False)
    text.load_state_dict(ema_text.state_dict(), strict=False)
    return unet.eval().requires_grad_(False), text.eval().requires_grad_(False), history


# --- the file ----------------------------------------------------------------------------------

def checkpoint_state_dict(unet: UNetModel, vae: AutoencoderKL, text: text_encoders.TextEncoder,
                          dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """SD1 single-file keys; floating tensors stored in `dtype` (a storage choice: the loader
    computes in its own dtype)."""
    sd = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    sd.update({VAE_PREFIX + k: v for k, v in vae.state_dict().items()})
    sd.update(text.state_dict_original())
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu() for k, v in sd.items()}


def write_checkpoint(path: Path, sd: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def run(recipe: Recipe, out: Path, work: Path, device: torch.device, command: str) -> dict:
    from safetensors.torch import load_file

    work.mkdir(parents=True, exist_ok=True)
    dtype = training_dtype(device, recipe.precision)
    timings = json.loads((work / "timings.json").read_text()) if (work / "timings.json").exists() else {}
    log(f"training on {device} with {dtype} autocast, {torch.get_num_threads()} thread(s); work folder {work}")

    vae_file = work / "vae.safetensors"
    vae = AutoencoderKL(recipe.vae_config())
    if vae_file.exists():
        vae.load_state_dict(load_file(str(vae_file)))
        vae = vae.to(device).eval().requires_grad_(False)
        log("stage 1: VAE read from the work folder")
    else:
        t0 = time.perf_counter()
        vae = train_vae(recipe, device, dtype)
        timings["normalisation"] = normalise_latent_space(vae, recipe, device, dtype)
        log(f"latent space: {timings['normalisation']}")
        timings["vae_reconstructions"] = judge_reconstructions(vae, recipe, device, dtype)
        log(f"pictures judged after encoding and decoding: {timings['vae_reconstructions']}")
        save_tensors(vae_file, vae.state_dict())
        timings["vae_seconds"] = time.perf_counter() - t0
        (work / "timings.json").write_text(json.dumps(timings, indent=1))

    data_file = work / "latents.pt"
    if data_file.exists():
        data = torch.load(data_file, weights_only=False)
        latents, scenes = data["latents"], data["scenes"]
        log(f"stage 2: {len(scenes)} latents read from the work folder")
    else:
        t0 = time.perf_counter()
        latents, scenes = encode_dataset(vae, recipe, device, dtype)
        torch.save({"latents": latents, "scenes": scenes}, data_file)
        timings["encode_seconds"] = time.perf_counter() - t0
        (work / "timings.json").write_text(json.dumps(timings, indent=1))

    t0 = time.perf_counter()
    unet, text, history = train_denoiser(recipe, latents, scenes, device, dtype, work)
    timings["denoiser_seconds"] = timings.get("denoiser_seconds", 0.0) + time.perf_counter() - t0
    (work / "timings.json").write_text(json.dumps(timings, indent=1))
    total = timings.get("vae_seconds", 0) + timings.get("encode_seconds", 0) + timings["denoiser_seconds"]
    metadata = {
        "latentgraph.recipe": json.dumps(asdict(recipe)),
        "latentgraph.command": command,
        "latentgraph.training_seconds": json.dumps({k: round(v, 1) for k, v in timings.items() if k.endswith("seconds")}
                                                   | {"total": round(total, 1)}),
        "latentgraph.device": f"{device.type}, {dtype}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
        "latentgraph.final_loss": f"{float(np.mean(history[-200:])):.5f}" if history else "",
        "modelspec.title": "LatentGraph shapes 64 (trained from scratch)",
        "modelspec.architecture": "stable-diffusion-v1",
    }
    write_checkpoint(out, checkpoint_state_dict(unet, vae, text), metadata)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); training took {total / 60:.1f} min")
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion.training.scratch", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors checkpoint to write")
    parser.add_argument("--work", type=Path, help="folder for stage results and resume state (default: OUT.work)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help=f"denoiser steps (default {Recipe.steps})")
    parser.add_argument("--vae-steps", type=int, help=f"VAE steps (default {Recipe.vae_steps})")
    parser.add_argument("--dataset-size", type=int, help=f"drawings encoded for stage 3 (default {Recipe.dataset_size})")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe(seed=args.seed, precision=args.precision)
    for name in ("steps", "vae_steps", "dataset_size"):
        if getattr(args, name) is not None:
            setattr(recipe, name, getattr(args, name))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    work = args.work or args.out.with_name(args.out.name + ".work")
    command = "python -m diffusion.training.scratch " + " ".join(argv if argv is not None else sys.argv[1:])
    run(recipe, args.out, work, device, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
