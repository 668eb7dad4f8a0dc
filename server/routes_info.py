"""What the editor asks about: nodes, models, the machine, extensions, server features."""
from __future__ import annotations

import asyncio
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from server import frontend
from server.jsonio import BadRequest, json_response
from server.state import state_of


def version() -> str:
    try:
        return metadata.version("latentgraph")
    except metadata.PackageNotFoundError:
        return "0.1.0"


async def object_info(request: web.Request) -> web.Response:
    registry = state_of(request).runtime.registry
    # INPUT_TYPES is re-read on each call (file lists stay fresh), which may touch the disk
    return json_response(await asyncio.to_thread(registry.describe_all))


async def object_info_one(request: web.Request) -> web.Response:
    registry = state_of(request).runtime.registry
    name = request.match_info["node_class"]
    try:
        info = await asyncio.to_thread(registry.describe, name)
    except Exception as exc:  # a plugin's INPUT_TYPES raising
        raise BadRequest(500, "node_info_failed", f"cannot describe {name}: {exc}") from None
    return json_response(info)


def _memory() -> tuple[int, int]:
    """(total, available) RAM in bytes."""
    try:
        fields = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields[key] = int(rest.split()[0]) * 1024
        return fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0))
    except (OSError, KeyError, ValueError, IndexError):
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
        except (ValueError, OSError, AttributeError):
            return 0, 0


def _devices(cpu_only: bool, ram: tuple[int, int]) -> list[dict]:
    import torch

    if not cpu_only and torch.cuda.is_available():
        out = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            reserved = torch.cuda.memory_reserved(index)
            out.append({"name": f"cuda:{index} {torch.cuda.get_device_name(index)}", "type": "cuda",
                        "index": index, "vram_total": total, "vram_free": free, "torch_vram_total": reserved,
                        "torch_vram_free": reserved - torch.cuda.memory_allocated(index)})
        return out
    return [{"name": "cpu", "type": "cpu", "index": None, "vram_total": ram[0], "vram_free": ram[1],
             "torch_vram_total": 0, "torch_vram_free": 0}]


async def system_stats(request: web.Request) -> web.Response:
    import torch

    state = state_of(request)
    ram = _memory()
    return json_response({
        "system": {
            "os": sys.platform,
            "platform": platform.platform(),
            "ram_total": ram[0],
            "ram_free": ram[1],
            "comfyui_version": version(),
            "latentgraph_version": version(),
            "required_frontend_version": frontend.REQUIRED_FRONTEND_VERSION,
            "installed_templates_version": frontend.installed_version(frontend.TEMPLATES_DIST),
            "required_templates_version": frontend.REQUIRED_TEMPLATES_VERSION,
            "python_version": sys.version,
            "pytorch_version": torch.__version__,
            "embedded_python": False,
            "argv": sys.argv,
        },
        "devices": _devices(state.config.cpu, ram),
    })


async def embeddings(request: web.Request) -> web.Response:
    names = state_of(request).folders.filenames("embeddings")
    return json_response([os.path.splitext(n)[0] for n in names])


async def models(request: web.Request) -> web.Response:
    return json_response(state_of(request).folders.folder_keys())


async def models_in(request: web.Request) -> web.Response:
    folders = state_of(request).folders
    key = request.match_info["folder"]
    try:
        names = await asyncio.to_thread(folders.filenames, key)
    except KeyError:
        raise BadRequest(404, "not_found", f"no model folder named {key!r}") from None
    return json_response(names)


def _js_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.js") if p.is_file()) if root.is_dir() else []


def extension_urls(web_root: Path, web_directories: dict[str, str]) -> list[str]:
    """URLs of the frontend scripts: the web root's extensions/ and each pack's WEB_DIRECTORY."""
    urls = ["/" + p.relative_to(web_root).as_posix() for p in _js_files(web_root / "extensions")]
    for pack, directory in web_directories.items():
        base = Path(directory)
        urls += [f"/extensions/{quote(pack)}/{quote(p.relative_to(base).as_posix())}" for p in _js_files(base)]
    return urls


async def extensions(request: web.Request) -> web.Response:
    state = state_of(request)
    urls = await asyncio.to_thread(extension_urls, state.config.web_root, state.runtime.registry.web_directories)
    return json_response(urls)


async def features(request: web.Request) -> web.Response:
    return json_response(state_of(request).features())


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/object_info", object_info),
    ("GET", "/object_info/{node_class}", object_info_one),
    ("GET", "/system_stats", system_stats),
    ("GET", "/embeddings", embeddings),
    ("GET", "/models", models),
    ("GET", "/models/{folder}", models_in),
    ("GET", "/extensions", extensions),
    ("GET", "/features", features),
]
