"""Command-line flags. ComfyUI's names where ComfyUI has the flag, so users' habits carry over."""
from __future__ import annotations

import argparse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py",
        description="LatentGraph: a node-graph engine for Stable Diffusion.",
        epilog="Commands: (none) start the server; 'run WORKFLOW [WORKFLOW ...]' run workflow files "
               "(API JSON, UI JSON, or PNG with an embedded workflow); 'train DATASET --checkpoint CKPT --output LORA' "
               "train a LoRA (main.py train --help).",
    )
    p.add_argument("command", nargs="*", metavar="COMMAND", help="'run' followed by workflow files")
    p.add_argument("--base-directory", type=Path, default=REPO_ROOT,
                   help="holds models/, input/, output/, temp/, user/ and custom_nodes/ (default: the repo)")
    p.add_argument("--output-directory", type=Path)
    p.add_argument("--input-directory", type=Path)
    p.add_argument("--temp-directory", type=Path)
    p.add_argument("--user-directory", type=Path)
    p.add_argument("--extra-model-paths-config", type=Path, nargs="+", action="extend", default=[],
                   metavar="PATH", help="ComfyUI-style extra_model_paths.yaml file(s)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache-classic", action="store_const", dest="cache", const="classic",
                       help="keep the last prompt's outputs (default)")
    cache.add_argument("--cache-lru", type=int, metavar="N", help="keep outputs used by the last N prompts")
    cache.add_argument("--cache-none", action="store_const", dest="cache", const="none",
                       help="keep nothing between prompts (least memory)")
    p.add_argument("--disable-metadata", action="store_true", help="do not embed the workflow in saved PNGs")
    p.add_argument("--disable-all-custom-nodes", action="store_true")
    p.add_argument("--verbose", nargs="?", const="DEBUG", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    p.add_argument("--listen", nargs="?", const="0.0.0.0,::", default="127.0.0.1", metavar="IP",
                   help="address(es) to listen on (default 127.0.0.1; bare --listen = all)")
    p.add_argument("--port", type=int, default=8188, help="port to serve on (0 picks a free one)")
    p.add_argument("--preview-method", choices=["none", "auto", "latent2rgb", "taesd"], default="auto",
                   help="live sampling previews: auto uses TAESD when its decoder is in models/vae_approx, "
                        "else a fast latent-to-RGB projection (default auto)")
    p.add_argument("--max-upload-size", type=float, default=100, metavar="MB",
                   help="largest request body the server accepts, in MB (default 100)")
    p.add_argument("--enable-cors-header", nargs="?", const="*", default=None, metavar="ORIGIN",
                   help="allow cross-origin requests from ORIGIN (bare flag = any origin); "
                        "this switches off the cross-site request guard")
    p.add_argument("--cpu", action="store_true", help="run everything on the CPU")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--force-fp32", action="store_true", help="fp32 weights everywhere")
    precision.add_argument("--force-fp16", action="store_true", help="fp16 weights (CUDA only; fp32 on the CPU)")
    precision.add_argument("--bf16-unet", action="store_true", help="bf16 UNet and text encoder weights")
    vae = p.add_mutually_exclusive_group()
    vae.add_argument("--fp32-vae", action="store_true")
    vae.add_argument("--fp16-vae", action="store_true")
    vae.add_argument("--bf16-vae", action="store_true")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.cache_lru is not None:
        if args.cache_lru < 1:
            parser.error("--cache-lru needs a number of prompts of at least 1")
        args.cache = f"lru:{args.cache_lru}"
    args.cache = args.cache or "classic"
    return args
