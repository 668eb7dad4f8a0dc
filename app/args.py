"""Command-line flags. ComfyUI's names where ComfyUI has the flag, so users' habits carry over."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_RAY = "local"  # --ray without an address: start a Ray cluster on this machine


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
    cache.add_argument("--cache-lru", type=int, metavar="N",
                       help="LRU cache of up to N node results (0, the default: no LRU, classic caching)")
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
    p.add_argument("--http-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="close a connection that takes longer than this to send a request's headers, or "
                        "stays idle longer between requests (default 10)")
    p.add_argument("--enable-cors-header", nargs="?", const="*", default=None, metavar="ORIGIN",
                   help="allow cross-origin requests from ORIGIN (bare flag = any origin); "
                        "this switches off the cross-site request guard")
    p.add_argument("--front-end-root", type=Path, metavar="DIR",
                   help="serve this web root instead of the LatentGraph editor (e.g. a built ComfyUI frontend)")
    p.add_argument("--front-end-version", metavar="OWNER/REPO@VERSION",
                   help="serve ComfyUI's official frontend from the installed comfyui-frontend-package "
                        "(pip install 'latentgraph[frontend]'): Comfy-Org/ComfyUI_frontend@latest, or @X.Y.Z to "
                        "insist on that version; nothing is downloaded")
    p.add_argument("--multi-user", action="store_true",
                   help="per-user settings and workflows, the user named by the Comfy-User header")
    p.add_argument("--cpu", action="store_true", help="run everything on the CPU")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--force-fp32", action="store_true",
                           help="fp32 UNet and VAE: ComfyUI's CPU numerics (the default on a CPU with native "
                                "bf16 computes them in bf16); text encoders always compute in fp32")
    precision.add_argument("--force-fp16", action="store_true", help="fp16 weights (CUDA only; fp32 on the CPU)")
    precision.add_argument("--bf16-unet", action="store_true",
                           help="bf16 UNet weights (on a GPU the text encoder's too)")
    vram = p.add_mutually_exclusive_group()
    vram.add_argument("--gpu-only", action="store_true", help="keep every model on the GPU, never offload")
    vram.add_argument("--highvram", action="store_true", help="keep models on the GPU after use")
    vram.add_argument("--normalvram", action="store_true", help="offload models when room is short (default)")
    vram.add_argument("--lowvram", action="store_true",
                      help="load only what fits of a model on the GPU, cast the rest per call")
    vram.add_argument("--novram", action="store_true", help="keep no weights on the GPU, cast every module per call")
    p.add_argument("--reserve-vram", type=float, default=None, metavar="GB",
                   help="memory to leave free for other programs (default 0.4 GB)")
    p.add_argument("--disable-smart-memory", action="store_true",
                   help="unload every other model whenever one is loaded, instead of keeping what fits")
    p.add_argument("--model-memory-budget", type=float, default=None, metavar="MB",
                   help="most memory loaded model weights may use on the compute device (the CPU: RAM); the "
                        "least recently used model beyond it is offloaded (GPU) or, on the CPU, the smallest that "
                        "makes room is released (default: what is free)")
    ray = p.add_argument_group("cluster", "run prompts on a Ray cluster's worker actors (needs Ray: "
                                          "pip install 'latentgraph[ray]'); see docs/cluster.md")
    ray.add_argument("--ray", nargs="?", const=LOCAL_RAY, default=None, metavar="ADDRESS",
                     help="run prompts on Ray actors; ADDRESS of an existing cluster ('auto', 'HOST:PORT', "
                          "'ray://HOST:10001'); bare --ray starts a local one")
    ray.add_argument("--ray-workers", type=int, default=0, metavar="N",
                     help="worker actors to start (default 0: one per GPU, or on a CPU-only cluster one per "
                          "--ray-cpus-per-worker cores)")
    ray.add_argument("--ray-cpus-per-worker", type=int, default=4, metavar="N",
                     help="CPU cores (and torch threads) of each worker on a CPU-only cluster (default 4)")
    vae = p.add_mutually_exclusive_group()
    vae.add_argument("--fp32-vae", action="store_true")
    vae.add_argument("--fp16-vae", action="store_true")
    vae.add_argument("--bf16-vae", action="store_true")
    text_enc = p.add_mutually_exclusive_group()  # storage only: text encoders compute in fp32
    text_enc.add_argument("--fp32-text-enc", action="store_true",
                          help="store text encoder weights in fp32 (default: fp16 on the CPU, as ComfyUI)")
    text_enc.add_argument("--fp16-text-enc", action="store_true", help="store text encoder weights in fp16")
    text_enc.add_argument("--bf16-text-enc", action="store_true", help="store text encoder weights in bf16")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.cache_lru is not None:
        if args.cache_lru < 0:
            parser.error(f"--cache-lru takes a number of node results (0 or more), got {args.cache_lru}")
        if args.cache_lru > 0:  # as in ComfyUI, 0 means no LRU cache: the classic one
            args.cache = f"lru:{args.cache_lru}"
    if not args.http_timeout > 0:
        parser.error("--http-timeout needs a number of seconds above 0")
    args.cache = args.cache or "classic"
    if args.ray is not None:
        if args.ray_workers < 0 or args.ray_cpus_per_worker < 1:
            parser.error("--ray-workers takes 0 or more, --ray-cpus-per-worker 1 or more")
        if importlib.util.find_spec("ray") is None:
            parser.error("--ray needs Ray: pip install 'latentgraph[ray]' (or pip install ray)")
    from server.frontend import FrontendError, choose_web_root

    try:
        args.web_root = choose_web_root(args.front_end_root, args.front_end_version)
    except FrontendError as exc:
        parser.error(str(exc))
    return args
