"""What ComfyUI's official frontend reads besides the API: workflow templates (core and node
packs'), node help pages, and node packs' translations.

* `/templates/...`: comfyui-workflow-templates' files; without the package, `index.json` is an
  empty list (the template browser shows none) and everything else is a 404.
* `/docs/...`: comfyui-embedded-docs' node help pages, when installed.
* `/workflow_templates`: `{pack: [workflow names]}` from each loaded pack's example folders, whose
  files are served at `/api/workflow_templates/<pack>/<file>`.
* `/i18n`: `{lang: {...}}` merged from each loaded pack's `locales/<lang>/main.json` (plus
  nodeDefs.json, commands.json and settings.json under those keys).
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from server import frontend
from server.jsonio import BadRequest, json_response
from server.routes_static import serve_file
from server.state import ServerState

log = logging.getLogger(__name__)

EXAMPLE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")  # ComfyUI's order
LOCALE_EXTRAS = ("nodeDefs", "commands", "settings")


@dataclass
class FrontendAssets:
    """The folders found at start; packages installed later need a restart, as in ComfyUI."""
    templates: list[Path]
    docs: Path | None
    packs: dict[str, Path]  # loaded pack folders by name
    _i18n: dict | None = field(default=None, repr=False)

    def i18n(self) -> dict:
        if self._i18n is None:
            self._i18n = collect_translations(self.packs)
        return self._i18n


ASSETS = web.AppKey("latentgraph_frontend_assets", FrontendAssets)


def setup(app: web.Application, state: ServerState) -> None:
    packs = {p.name: Path(p.path) for p in state.runtime.packs if p.ok and Path(p.path).is_dir()}
    app[ASSETS] = FrontendAssets(frontend.template_roots(), frontend.docs_root(), packs)


def merge_json(base: Any, update: Any) -> Any:
    """ComfyUI's merge for translations: objects merge key by key, lists concatenate, else update wins."""
    if isinstance(base, dict) and isinstance(update, dict):
        merged = dict(base)
        for key, value in update.items():
            merged[key] = merge_json(merged[key], value) if key in merged else value
        return merged
    if isinstance(base, list) and isinstance(update, list):
        return base + update
    return update


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.error("cannot read translations %s: %s", path, exc)
        return {}
    return value if isinstance(value, dict) else {}


def collect_translations(packs: dict[str, Path]) -> dict:
    out: dict[str, Any] = {}
    for name in sorted(packs):
        locales = packs[name] / "locales"
        if not locales.is_dir():
            continue
        for lang_dir in sorted(p for p in locales.iterdir() if p.is_dir()):
            doc = _read_json(lang_dir / "main.json")
            for key in LOCALE_EXTRAS:
                extra = _read_json(lang_dir / f"{key}.json")
                if extra:
                    doc[key] = extra
            out[lang_dir.name] = merge_json(out.get(lang_dir.name, {}), doc)
    return out


def example_workflows(packs: dict[str, Path]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in sorted(packs):
        for folder in EXAMPLE_FOLDERS:
            directory = packs[name] / folder
            if directory.is_dir():
                out.setdefault(name, []).extend(sorted(p.stem for p in directory.glob("*.json") if p.is_file()))
    return out


def _assets(request: web.Request) -> FrontendAssets:
    return request.app[ASSETS]


async def workflow_templates(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(example_workflows, _assets(request).packs))


async def i18n(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(_assets(request).i18n))


def _first_existing(roots: list[Path], relative: str, what: str) -> web.StreamResponse:
    for root in roots:
        try:
            return serve_file(root, relative)
        except BadRequest as exc:
            if exc.status != 404:  # a refused path is refused everywhere
                raise
    raise BadRequest(404, "not_found", f"no {what} /{relative}")


async def pack_workflow_file(request: web.Request) -> web.StreamResponse:
    pack = _assets(request).packs.get(request.match_info["pack"])
    if pack is None:
        raise BadRequest(404, "not_found", f"no loaded node pack {request.match_info['pack']!r}")
    roots = [pack / folder for folder in EXAMPLE_FOLDERS if (pack / folder).is_dir()]
    return _first_existing(roots, request.match_info["path"], "example workflow")


async def template_file(request: web.Request) -> web.StreamResponse:
    roots, relative = _assets(request).templates, request.match_info["path"]
    if not roots:
        if relative == "index.json":
            return json_response([])  # a valid, empty template index
        raise BadRequest(404, "not_found", f"no template /{relative}: {frontend.TEMPLATES_DIST} is not installed "
                                           "(pip install 'latentgraph[frontend]')")
    return _first_existing(roots, relative, "template file")


async def docs_file(request: web.Request) -> web.StreamResponse:
    root = _assets(request).docs
    if root is None:
        raise BadRequest(404, "not_found", "no node documentation here: comfyui-embedded-docs is not installed "
                                           "(pip install 'latentgraph[frontend]')")
    return _first_existing([root], request.match_info["path"], "node documentation")


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/workflow_templates", workflow_templates),
    ("GET", "/i18n", i18n),
]


def add_file_routes(app: web.Application) -> None:
    """Static folders, without an /api twin (as ComfyUI's); before the web root's catch-all."""
    app.router.add_get("/api/workflow_templates/{pack}/{path:.*}", pack_workflow_file)
    app.router.add_get("/templates/{path:.*}", template_file)
    app.router.add_get("/docs/{path:.*}", docs_file)
