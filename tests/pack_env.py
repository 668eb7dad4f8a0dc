"""Running the real custom-node packs of ../shared/packs in a test server, unchanged and in place.

The packs are loaded from where they are, through an extra_model_paths.yaml `custom_nodes:` entry,
never copied into the project. Their third-party imports that our environment lacks are installed
once with pip into a cache folder (pip's own cache makes a reinstall quick) that only the pack
server sees, with --no-deps so nothing we already have is shadowed. torchvision, which some packs
import, is the CUDA build for our torch; on a CPU-only torch LatentGraph itself declares the two
operator schemas torchvision's import needs (diffusion/torchvision_ops.py), so no file is patched.
Nothing is written into the packs' folders: bytecode goes to a prefix under the test's base
folder and WAS Node Suite's settings to WAS_CONFIG_DIR there.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from tests.paths import SHARED
from tests.server_helpers import LiveServer, cache_lock

PACKS = SHARED / "packs"

# Nodes ComfyUI a125cd84 lists for each pack (../shared/packs/README.md).
EXPECTED_NODES = {
    "ComfyUI_essentials": 85,
    "was-node-suite-comfyui": 221,
    "Derfuu_ComfyUI_ModdedNodes": 31,
    "ComfyUI_ADV_CLIP_emb": 4,
    "ComfyUI_Comfyroll_CustomNodes": 199,
    "cg-use-everywhere": 7,
    "ComfyUI_UltimateSDUpscale": 3,
}

# What the packs import at import time that LatentGraph does not depend on: pip name -> import
# name, dependencies spelled out (installed with --no-deps).
PACK_REQUIREMENTS = {
    "numba": "numba", "llvmlite": "llvmlite",  # WAS, essentials
    "torchvision==0.28.0": "torchvision",  # essentials, UltimateSDUpscale (0.28 pairs with torch 2.13)
    "requests": "requests", "charset-normalizer": "charset_normalizer", "idna": "idna", "urllib3": "urllib3",
    "certifi": "certifi",  # WAS
    "matplotlib": "matplotlib", "contourpy": "contourpy", "cycler": "cycler", "fonttools": "fontTools",
    "kiwisolver": "kiwisolver", "pyparsing": "pyparsing", "python-dateutil": "dateutil", "six": "six",  # Comfyroll
}


def pack_site() -> Path:
    """A folder holding the packs' requirements that this environment lacks (installed on first use)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "latentgraph" / "pack-test-site"
    with cache_lock(cache):
        missing = [spec for spec, name in PACK_REQUIREMENTS.items()
                   if importlib.util.find_spec(name) is None and not (cache / name).exists()]
        if missing:
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            "--no-deps", "--target", str(cache), *missing], check=True)
    return cache


def pack_server(base: Path, packs: Path = PACKS, *flags: str) -> LiveServer:
    """A server over `base` that loads every pack in `packs` from where it is."""
    base.mkdir(parents=True, exist_ok=True)
    config = base / "extra_model_paths.yaml"
    config.write_text(f"shared_packs:\n  custom_nodes: {packs}\n", encoding="utf-8")
    site = pack_site()
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(site)) if p),
        "PYTHONPYCACHEPREFIX": str(base / "pycache"),
        "WAS_CONFIG_DIR": str(base / "was"),
    }
    (base / "was").mkdir(exist_ok=True)
    return LiveServer(base, "--extra-model-paths-config", str(config), *flags, packs=(), env=env)
