"""`python main.py train DATASET --checkpoint CKPT --output LORA.safetensors`: LoRA training from a
terminal, the same training as the Train LoRA node (diffusion.training.lora_train).

The data set is a folder of images with optional same-named .txt captions (kohya "N_name"
subfolders repeat their images N times). Images are encoded once by the checkpoint's VAE and the
captions by its text encoder; then the UNet's LoRA is trained with a progress bar on stderr.
Every --save-every steps, and when interrupted (Ctrl-C), the LoRA so far is written to the
output, the trainer state to OUTPUT.state.pt and the loss plot to OUTPUT.loss.png; --resume
continues from that state (same data set and settings; --steps may grow). At the end the LoRA,
the plot and the state are in place, and the LoRA loads in Load LoRA like any other.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

import torch

from diffusion.training import datasets
from diffusion.training.loop import training_dtype
from diffusion.training.lora_train import ALGORITHMS, DTYPES, LOSSES, OPTIMIZERS, LoraSettings, LoraTrainer
from diffusion.training.loss_plot import draw_loss_plot


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py train", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("dataset", type=Path, help="folder of training images (with .txt captions beside them)")
    p.add_argument("--checkpoint", required=True,
                   help="base checkpoint: a file path, or a name in the base directory's models/checkpoints")
    p.add_argument("--output", type=Path, required=True, help="the LoRA .safetensors file to write")
    defaults = LoraSettings()
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--grad-accumulation-steps", type=int, default=defaults.grad_accumulation_steps)
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    p.add_argument("--rank", type=int, default=defaults.rank)
    p.add_argument("--algorithm", choices=list(ALGORITHMS), default=defaults.algorithm,
                   help="adapter kind for matrices and kernels (default LoRA)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer)
    p.add_argument("--loss", choices=list(LOSSES), default=defaults.loss_function)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--training-dtype", choices=["auto", *DTYPES], default="auto",
                   help="compute precision: auto = bf16 where the hardware has it, else fp32")
    p.add_argument("--lora-dtype", choices=list(DTYPES), default="fp32", help="dtype of the LoRA weights")
    p.add_argument("--no-gradient-checkpointing", action="store_true",
                   help="keep activations instead of recomputing them (faster, more memory)")
    p.add_argument("--existing-lora", type=Path, help="start from this LoRA instead of a new one")
    p.add_argument("--resize-method", choices=datasets.RESIZE_METHODS, default="None")
    p.add_argument("--width", type=int, help="resize every image to this width")
    p.add_argument("--height", type=int, help="resize every image to this height")
    p.add_argument("--save-every", type=int, default=50, metavar="N",
                   help="write the LoRA, state and loss plot every N steps (default 50; 0: only at the end)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT.state.pt")
    p.add_argument("--base-directory", type=Path, default=Path(__file__).resolve().parent.parent,
                   help="where models/checkpoints is looked up (default: the repo)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when CUDA is present")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    return p


def state_path(output: Path) -> Path:
    return output.with_name(output.name + ".state.pt")


def plot_path(output: Path) -> Path:
    return output.with_name(output.stem + ".loss.png")


def find_checkpoint(name: str, base: Path) -> Path:
    path = Path(name).expanduser()
    if path.is_file():
        return path
    from app.folders import FolderPaths

    found = FolderPaths(base, create=False, builtin_models=True).full_path("checkpoints", name)
    if found is None:
        raise FileNotFoundError(f"checkpoint {name!r} is neither a file nor in {base / 'models' / 'checkpoints'}")
    return found


class ProgressBar:
    """One line on a terminal: steps, loss (moving average), speed and time left."""

    def __init__(self, total: int, start: int, stream: TextIO, width: int = 30):
        self.total, self.start, self.stream, self.width = total, start, stream, width
        self.started = time.perf_counter()
        self.smooth: float | None = None

    def __call__(self, step: int, loss: float) -> None:
        self.smooth = loss if self.smooth is None else 0.9 * self.smooth + 0.1 * loss
        elapsed = time.perf_counter() - self.started
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        left = (self.total - step) / rate if rate > 0 else 0.0
        done = int(self.width * step / self.total)
        self.stream.write(f"\r  [{'#' * done}{'.' * (self.width - done)}] {step}/{self.total} loss {self.smooth:.4f} "
                          f"{rate:.2f} steps/s, {left:.0f} s left ")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def save_progress(trainer: LoraTrainer, output: Path, meta: dict) -> None:
    """The LoRA so far, the resume state and the loss plot, each replaced atomically."""
    from safetensors.torch import save_file

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    save_file(trainer.lora_state_dict(), str(tmp),
              metadata={"ss_network_module": "networks.lora", "latentgraph_steps": str(trainer.step_index)})
    os.replace(tmp, output)
    state = trainer.state_dict() | {"meta": meta}
    torch.save(state, state_path(output).with_suffix(".tmp"))
    os.replace(state_path(output).with_suffix(".tmp"), state_path(output))
    if trainer.losses:
        draw_loss_plot(trainer.losses, title=output.name).save(plot_path(output))


def prepare(args, log) -> tuple[object, torch.Tensor, list, dict]:
    """(MODEL, latents, conditioning, data-set description) from the checkpoint and the folder."""
    from diffusion.device import DevicePolicy
    from diffusion.handles import open_checkpoint
    from diffusion.model_management import ModelManagement

    checkpoint = find_checkpoint(args.checkpoint, args.base_directory)
    manager = ModelManagement(DevicePolicy.choose(cpu=args.cpu, force_fp32=True))
    log(f"loading {checkpoint}")
    models = open_checkpoint(checkpoint, manager, [])
    if models.vae is None or models.clip is None:
        raise ValueError(f"{checkpoint} lacks a VAE or a text encoder; the train command needs both")
    if not args.dataset.is_dir():
        raise FileNotFoundError(f"data set folder {args.dataset} does not exist")
    pairs = datasets.captioned_images(args.dataset)
    images = datasets.load_images([p for p, _ in pairs], args.resize_method, args.width, args.height)
    log(f"{len(pairs)} image(s) of {images.shape[2]}x{images.shape[1]} from {args.dataset}, "
        f"{sum(1 for _, c in pairs if c)} with captions")
    with torch.inference_mode():
        latents = torch.cat([models.vae.encode(images[i:i + 8]) for i in range(0, len(images), 8)])
        encoded: dict[str, list] = {}
        for _, caption in pairs:
            if caption not in encoded:
                encoded[caption] = models.clip.encode_from_tokens_scheduled(models.clip.tokenize(caption))[0]
        positive = [encoded[caption] for _, caption in pairs]
    described = {"dataset": str(args.dataset.resolve()), "images": [str(p) for p, _ in pairs],
                 "checkpoint": str(checkpoint.resolve())}
    return models.model, latents, positive, described


def main(argv: list[str], err: TextIO = sys.stderr) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        err.write(msg + "\n")
        err.flush()

    try:
        model, latents, positive, described = prepare(args, log)
        device = model.load_device
        dtype_name = args.training_dtype
        if dtype_name == "auto":
            dtype_name = "bf16" if training_dtype(device, "auto") == torch.bfloat16 else "fp32"
        settings = LoraSettings(steps=args.steps, batch_size=args.batch_size,
                                grad_accumulation_steps=args.grad_accumulation_steps,
                                learning_rate=args.learning_rate, rank=args.rank, optimizer=args.optimizer,
                                loss_function=args.loss, seed=args.seed, training_dtype=dtype_name,
                                lora_dtype=args.lora_dtype,
                                gradient_checkpointing=not args.no_gradient_checkpointing,
                                algorithm=args.algorithm)
        existing = None
        if args.existing_lora is not None:
            from diffusion.checkpoint import read_state_dict
            existing = read_state_dict(args.existing_lora)
        trainer = LoraTrainer(model, latents, positive, settings, existing)
        meta = described | {"settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "steps"}}
        if args.resume:
            resume_from(trainer, args.output, meta, log)
    except (ValueError, FileNotFoundError, OSError) as exc:
        log(f"train: {exc}")
        return 2

    log(f"training a rank-{settings.rank} {settings.algorithm} on {device} ({settings.training_dtype}), "
        f"{settings.steps} step(s) of {settings.batch_size} image(s)")
    bar = ProgressBar(trainer.total_batches, trainer.step_index, err)
    accumulation = settings.grad_accumulation_steps
    with stop_requests() as stop:
        while not trainer.done:
            loss, _ = trainer.step()
            bar(trainer.step_index, loss)
            at_step_end = trainer.step_index % accumulation == 0
            if stop.is_set() and at_step_end:
                bar.close()
                save_progress(trainer, args.output, meta)
                log(f"interrupted at step {trainer.step_index // accumulation}: progress saved; "
                    "continue with --resume")
                return 130
            step = trainer.step_index // accumulation
            if args.save_every and at_step_end and step % args.save_every == 0 and not trainer.done:
                save_progress(trainer, args.output, meta)
    bar.close()
    save_progress(trainer, args.output, meta)
    log(f"wrote {args.output}, {plot_path(args.output)} (loss plot) and {state_path(args.output)} (resume state)")
    return 0


@contextlib.contextmanager
def stop_requests():
    """An event set by the first Ctrl-C (SIGINT) or SIGTERM, so training stops after a whole step
    and saves a consistent state; a second Ctrl-C stops at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def resume_from(trainer: LoraTrainer, output: Path, meta: dict, log) -> None:
    path = state_path(output)
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no saved state at {path}")
    state = torch.load(path, weights_only=False)
    if state.get("meta") != meta:
        saved = state.get("meta") or {}
        changed = sorted(k for k in set(saved) | set(meta) if saved.get(k) != meta.get(k))
        raise ValueError(f"--resume: {path} was saved for another data set or settings (differs in: "
                         f"{', '.join(changed)}); train afresh without --resume or restore them")
    trainer.load_state_dict(state)
    log(f"resumed from {path} at step {trainer.step_index // trainer.settings.grad_accumulation_steps}")
