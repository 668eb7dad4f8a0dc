"""Which web root to serve, and the pip packages that ComfyUI's official frontend reads from.

ComfyUI's frontend ships as pip packages: comfyui-frontend-package (the app), comfyui-workflow-
templates (the template browser's index, workflows and thumbnails; newer releases split it over
several packages, each with a `templates/` folder) and comfyui-embedded-docs (node help pages).
They are an optional extra of ours (`pip install 'latentgraph[frontend]'`); nothing here imports
their code, it only finds their folders.
"""
from __future__ import annotations

import importlib.util
import re
from importlib import metadata
from pathlib import Path

FRONTEND_DIST = "comfyui-frontend-package"
TEMPLATES_DIST = "comfyui-workflow-templates"
# The versions ComfyUI a125cd84 pins and our tests run; /system_stats reports them as required,
# and the frontend warns when it is older.
REQUIRED_FRONTEND_VERSION = "1.27.10"
REQUIRED_TEMPLATES_VERSION = "0.1.95"
# Packages whose templates/ folders together make /templates: the one-package layout first,
# then the split layout's json and media bundles.
TEMPLATE_MODULES = ("comfyui_workflow_templates", "comfyui_workflow_templates_json",
                    "comfyui_workflow_templates_media_api", "comfyui_workflow_templates_media_video",
                    "comfyui_workflow_templates_media_image", "comfyui_workflow_templates_media_other",
                    "comfyui_workflow_templates_media_assets_01", "comfyui_workflow_templates_media_assets_02")
DOCS_MODULE = "comfyui_embedded_docs"
# ComfyUI's --front-end-version syntax: owner/repo@version, latest or prerelease
_VERSION_SPEC = re.compile(r"^([a-zA-Z0-9][a-zA-Z0-9-]{0,38})/([a-zA-Z0-9_.-]+)@(v?\d+\.\d+\.\d+[-._a-zA-Z0-9]*|latest|"
                           r"prerelease)$")
_OFFICIAL_REPOS = ("comfyui_frontend", "comfyui")  # Comfy-Org/ComfyUI_frontend; ComfyUI's default names ComfyUI


class FrontendError(ValueError):
    """A frontend flag that cannot be honoured; the message says what to do."""


def package_folder(module: str, sub: str) -> Path | None:
    """`sub` inside an installed package (plain or namespace), found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / sub
        if folder.is_dir():
            return folder
    return None


def installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def official_frontend() -> tuple[str, Path]:
    """(version, static folder) of the installed comfyui-frontend-package."""
    version = installed_version(FRONTEND_DIST)
    folder = package_folder("comfyui_frontend_package", "static")
    if version is None or folder is None:
        raise FrontendError(f"{FRONTEND_DIST} is not installed; install it with "
                            f"pip install 'latentgraph[frontend]' (or pip install {FRONTEND_DIST})")
    return version, folder


def check_web_root(folder: Path) -> Path:
    folder = Path(folder).expanduser().resolve()
    if not (folder / "index.html").is_file():
        raise FrontendError(f"{folder} is not a web root: it has no index.html")
    return folder


def choose_web_root(front_end_root: Path | None, front_end_version: str | None) -> Path | None:
    """The web root the flags ask for, or None for our own editor.

    --front-end-root wins, as in ComfyUI. --front-end-version takes ComfyUI's values
    (`Comfy-Org/ComfyUI_frontend@latest`, `...@1.27.10`) but never downloads: it serves the
    installed package, and a pinned version must be the installed one.
    """
    if front_end_root is not None:
        return check_web_root(front_end_root)
    if not front_end_version:
        return None
    match = _VERSION_SPEC.match(front_end_version.strip())
    if match is None:
        raise FrontendError(f"{front_end_version!r} is not owner/repo@version (e.g. Comfy-Org/ComfyUI_frontend@latest)")
    repo, wanted = match.group(2), match.group(3)
    if repo.lower() not in _OFFICIAL_REPOS:
        raise FrontendError(f"only ComfyUI's official frontend is served from its pip package, not {repo!r}; "
                            "point --front-end-root at another frontend's built files")
    version, folder = official_frontend()
    if wanted not in ("latest", "prerelease") and wanted.lstrip("v") != version:
        raise FrontendError(f"{FRONTEND_DIST} {version} is installed, not {wanted.lstrip('v')}; nothing is "
                            f"downloaded here: pip install {FRONTEND_DIST}=={wanted.lstrip('v')}")
    return check_web_root(folder)


def template_roots() -> list[Path]:
    """The installed templates/ folders (empty when comfyui-workflow-templates is absent)."""
    return [folder for module in TEMPLATE_MODULES if (folder := package_folder(module, "templates"))]


def docs_root() -> Path | None:
    return package_folder(DOCS_MODULE, "docs")
