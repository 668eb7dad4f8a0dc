"""Measure how well a shapes model follows its prompts, through the same path a workflow takes.

    python -m diffusion.training.evaluate models_builtin/latentgraph-shapes-64.safetensors --seeds 8

The checkpoint is opened by the loader the Load Checkpoint node uses, prompts are encoded by its
CLIP, pictures are sampled by KSampler's code (euler, normal schedule) and decoded by its VAE,
then judged by `shapes.judge` (no learnt component). Every colour and shape of the vocabulary is
asked for (`shapes.evaluation_scenes`), including the combinations held out of training.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffusion.device import DevicePolicy
from diffusion.handles import open_checkpoint
from diffusion.ksampler import common_ksampler
from diffusion.model_management import ModelManagement
from diffusion.training import shapes


@dataclass(frozen=True)
class Sampling:
    steps: int = 20
    cfg: float = 5.0
    sampler: str = "euler"
    scheduler: str = "normal"
    negative: str = ""


def generate(models, prompt: str, seeds: list[int], settings: Sampling = Sampling(),
             size: int = shapes.IMAGE_SIZE) -> np.ndarray:
    """uint8 [len(seeds), size, size, 3]: one picture per seed, each sampled on its own as
    KSampler does for that seed."""
    clip = models.clip
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(settings.negative))
    out = []
    for seed in seeds:
        latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
        result = common_ksampler(models.model, seed, settings.steps, settings.cfg, settings.sampler,
                                 settings.scheduler, positive, negative, latent)
        image = models.vae.decode(result["samples"])[0]
        out.append((image.numpy() * 255).round().astype(np.uint8))
    return np.stack(out)


@torch.no_grad()   # scoped: a caller's autograd state (a test process, a training loop) is left as it was
def evaluate(checkpoint: str | Path, seeds: int = 4, settings: Sampling = Sampling(),
             scenes: list[shapes.Scene] | None = None, report=print) -> dict:
    """Per-scene judgements and accuracy summaries (overall, held-out, per colour and per shape)."""
    models = open_checkpoint(Path(checkpoint), ModelManagement(DevicePolicy.choose(cpu=True)), [])
    scenes = scenes if scenes is not None else shapes.evaluation_scenes()
    rows = []
    started = time.perf_counter()
    for scene in scenes:
        images = generate(models, scene.caption(), list(range(seeds)), settings)
        judged = [shapes.judge(img, scene) for img in images]
        rows.append((scene, judged))
        marks = "".join("+" if j.all_ok else "-" for j in judged)
        report(f"{marks}  {scene.caption()}{'  (held out)' if scene.held_out else ''}  "
               f"[seen: {', '.join(j.seen_shape for j in judged)}]")
    elapsed = time.perf_counter() - started
    return summarise(rows) | {"seconds": elapsed, "images": len(scenes) * seeds}


def _rate(judged: list, what: str) -> float:
    return float(np.mean([getattr(j, what) for j in judged])) if judged else float("nan")


def summarise(rows: list) -> dict:
    def block(selected) -> dict:
        judged = [j for _, js in selected for j in js]
        return {"n": len(judged), "colour": _rate(judged, "colour_ok"), "background": _rate(judged, "background_ok"),
                "shape": _rate(judged, "shape_ok"), "all": _rate(judged, "all_ok")}

    by_colour, by_shape = defaultdict(list), defaultdict(list)
    for scene, judged in rows:
        by_colour[scene.colour].append((scene, judged))
        by_shape[scene.shape].append((scene, judged))
    return {"overall": block(rows), "held_out": block([r for r in rows if r[0].held_out]),
            "trained": block([r for r in rows if not r[0].held_out]),
            "per_colour": {c: block(v) for c, v in by_colour.items()},
            "per_shape": {s: block(v) for s, v in by_shape.items()}}


def format_summary(summary: dict) -> str:
    def line(name, b):
        return (f"| {name} | {b['n']} | {b['colour']:.0%} | {b['background']:.0%} | {b['shape']:.0%} | "
                f"{b['all']:.0%} |")

    lines = ["| prompts | images | named colour in its region | background colour elsewhere | shape | all three |",
             "|---|---:|---:|---:|---:|---:|",
             line("all", summary["overall"]), line("combinations seen in training", summary["trained"]),
             line("held-out combinations", summary["held_out"])]
    lines += [line(f"colour: {c}", b) for c, b in summary["per_colour"].items()]
    lines += [line(f"shape: {s}", b) for s, b in summary["per_shape"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion.training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--seeds", type=int, default=8, help="pictures per prompt (seeds 0..N-1)")
    parser.add_argument("--steps", type=int, default=Sampling.steps)
    parser.add_argument("--cfg", type=float, default=Sampling.cfg)
    parser.add_argument("--sampler", default=Sampling.sampler)
    parser.add_argument("--scheduler", default=Sampling.scheduler)
    parser.add_argument("--prompt-set", type=int, default=0,
                        help="which draw of evaluation prompts (shapes.evaluation_scenes seed); 0 is the reported one")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = evaluate(args.checkpoint, args.seeds, Sampling(args.steps, args.cfg, args.sampler, args.scheduler),
                       scenes=shapes.evaluation_scenes(args.prompt_set))
    print(format_summary(summary))
    print(f"{summary['images']} pictures in {summary['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
