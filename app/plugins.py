"""Loading custom node packs into a NodeRegistry: ComfyUI's classic contract (NODE_CLASS_MAPPINGS)
and its V3 schema (an async or sync `comfy_entrypoint` returning a ComfyExtension).

Each pack is imported in isolation from the others: one that fails is recorded and skipped,
and the engine starts with the rest.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Mapping

from graph.aio import run_sync
from graph.registry import NodeRegistry, PackFailure

try:
    import tomllib
except ImportError:  # Python 3.10: [tool.comfy] web is then not read, WEB_DIRECTORY still is
    tomllib = None

logger = logging.getLogger(__name__)


@dataclass
class PackResult:
    name: str
    path: str
    seconds: float
    ok: bool
    error: str | None
    nodes: list[str] = field(default_factory=list)


class PackError(Exception):
    """A pack imported but does not follow the contract."""


def find_packs(directory: Path) -> list[Path]:
    """The *.py files and package folders of one custom_nodes directory, in name order."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        name = entry.name
        if name.startswith((".", "__pycache__")) or name.endswith(".disabled") or name == "__init__.py":
            continue
        if entry.is_file() and name.endswith(".py"):
            found.append(entry)
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            found.append(entry)
    return found


def run_prestartup_scripts(dirs: list[Path], log: Callable[[str], None] = print) -> list[tuple[float, str, bool]]:
    """Run each pack folder's prestartup_script.py, as ComfyUI does before any pack imports
    (a failing script is reported and the rest go on); returns (seconds, pack path, ok) each."""
    timings = []
    for pack in (p for d in dirs for p in find_packs(d) if p.is_dir()):
        script = pack / "prestartup_script.py"
        if not script.is_file():
            continue
        started = time.perf_counter()
        ok = True
        try:
            spec = importlib.util.spec_from_file_location(f"{module_name_for(pack)}_prestartup", script)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        except (Exception, SystemExit) as exc:
            ok = False
            log(f"{traceback.format_exc().rstrip()}\nFailed to execute startup-script: {script} / {describe_error(exc)}")
        timings.append((time.perf_counter() - started, str(pack), ok))
    if timings:
        log("Prestartup times for custom nodes:")
        for seconds, path, ok in sorted(timings):
            log(f"{seconds:6.1f} seconds{'' if ok else ' (PRESTARTUP FAILED)'}: {path}")
    return timings


def load_custom_nodes(registry: NodeRegistry, dirs: list[Path], log: Callable[[str], None] = print) -> list[PackResult]:
    run_prestartup_scripts(dirs, log)
    results = [load_pack(registry, path, log) for d in dirs for path in find_packs(d)]
    if results:
        log("Import times for custom nodes:")
        for r in sorted(results, key=lambda r: r.seconds):
            log(f"{r.seconds:6.1f} seconds{'' if r.ok else ' (IMPORT FAILED)'}: {r.path}")
    return results


def load_pack(registry: NodeRegistry, path: Path, log: Callable[[str], None] = print) -> PackResult:
    """Import one pack and register what it exports; failures land in registry.failed_packs."""
    path = Path(path).resolve()
    name = path.stem if path.is_file() else path.name
    started = time.perf_counter()
    try:
        module = _import(path)
        nodes = _register(registry, module, name, path)
    except (Exception, SystemExit) as exc:  # a pack's sys.exit() must not stop the engine
        error = describe_error(exc)
        log(f"{traceback.format_exc().rstrip()}\nCannot import {path} module for custom nodes: {error}")
        registry.failed_packs.append(PackFailure(name, str(path), error))
        return PackResult(name, str(path), time.perf_counter() - started, False, error, [])
    return PackResult(name, str(path), time.perf_counter() - started, True, None, nodes)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        where = f"{Path(exc.filename).name}, " if exc.filename else ""
        return f"{type(exc).__name__}: {exc.msg} ({where}line {exc.lineno})"
    return f"{type(exc).__name__}: {exc}"


def module_name_for(path: Path) -> str:
    """A sys.modules name unique to the pack's location, so same-named packs never collide.

    It holds no dots, because a dotted name would make Python look for parent packages.
    """
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem if path.is_file() else path.name)
    return f"latentgraph_pack_{digest}_{stem}"


def _import(path: Path) -> ModuleType:
    module_name = module_name_for(path)
    if path.is_dir():
        spec = importlib.util.spec_from_file_location(
            module_name, path / "__init__.py", submodule_search_locations=[str(path)])
    else:
        spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot build an import spec for {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered before running so the package's relative imports find their parent.
    sys.modules[module_name] = module
    imports = _ImportRecorder()
    sys.meta_path.insert(0, imports)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for loaded in [m for m in sys.modules if m == module_name or m.startswith(module_name + ".")]:
            del sys.modules[loaded]
        raise
    finally:
        sys.meta_path.remove(imports)
        _restore_dropped_libraries(imports.names, path)
    return module


class _ImportRecorder:
    """A meta-path finder that only notes the names imported (it finds nothing itself)."""

    def __init__(self):
        self.names: set[str] = set()

    def find_spec(self, name, path=None, target=None):
        self.names.add(name)
        return None


def _restore_dropped_libraries(imported: set[str], pack: Path) -> None:
    """Put back the library modules a pack imported (`imported`) and then dropped from sys.modules.

    UltimateSDUpscale unloads every module first imported during its own import, its own and
    third-party ones alike. Importing a library such as torch._dynamo a second time fails, since
    torch registers its operator libraries once per process (in ComfyUI such libraries are loaded
    before any pack). The dropped modules are still referenced from the modules that remain, so
    those outside the pack's folder that nothing has replaced are put back.
    """
    gone = {name for name in imported if name not in sys.modules}  # or never there: failed imports
    if not gone:
        return
    found: dict[str, ModuleType] = {}
    holders = list(sys.modules.values())
    while holders:
        for value in list(getattr(holders.pop(), "__dict__", {}).values()):
            if issubclass(type(value), ModuleType):  # type(): some objects warn when asked for __class__
                name = value.__name__
                if name in gone and name not in found:
                    found[name] = value
                    holders.append(value)  # its submodules may be gone too
    for name, dropped in found.items():
        origin = getattr(getattr(dropped, "__spec__", None), "origin", None) or ""
        if origin and not Path(origin).resolve().is_relative_to(pack):
            sys.modules[name] = dropped


def _register(registry: NodeRegistry, module: ModuleType, name: str, path: Path) -> list[str]:
    classes = getattr(module, "NODE_CLASS_MAPPINGS", None)
    web_dir = _web_directory(module, path)
    python_module = f"custom_nodes.{name}"
    registry.web_directories.update(web_dir)
    if classes is None:
        if hasattr(module, "comfy_entrypoint"):  # ComfyUI's V3 schema: NODE_CLASS_MAPPINGS wins if both
            return _register_extension(registry, module.comfy_entrypoint, python_module)
        if not web_dir:
            raise PackError("the module defines neither NODE_CLASS_MAPPINGS nor WEB_DIRECTORY")
    elif not isinstance(classes, Mapping):
        raise PackError(f"NODE_CLASS_MAPPINGS must be a dict, got {type(classes).__name__}")
    classes = dict(classes or {})
    for key, cls in classes.items():
        if not isinstance(key, str) or not isinstance(cls, type):
            raise PackError(f"NODE_CLASS_MAPPINGS entry {key!r} must map a name to a class, got {cls!r}")
    display = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None)
    if display is not None and not isinstance(display, Mapping):
        logger.warning("%s: NODE_DISPLAY_NAME_MAPPINGS is not a dict; ignored", path)
        display = None
    for cls in classes.values():
        try:
            cls.RELATIVE_PYTHON_MODULE = python_module  # ComfyUI tags classes so; some packs read it
        except (AttributeError, TypeError):
            pass
    return registry.register_mappings(classes, dict(display or {}), python_module=python_module, builtin=False)


def _register_extension(registry: NodeRegistry, entrypoint: object, python_module: str) -> list[str]:
    """A V3 pack: `comfy_entrypoint()` (sync or async) returns a ComfyExtension; its nodes are
    registered under their schema's node_id, with the schema's display name."""
    from comfy_api.latest import ComfyExtension

    if not callable(entrypoint):
        raise PackError("comfy_entrypoint is not callable")
    extension = run_sync(entrypoint())
    if not isinstance(extension, ComfyExtension):
        raise PackError(f"comfy_entrypoint returned {type(extension).__name__}, not a ComfyExtension")
    run_sync(extension.on_load())
    node_list = run_sync(extension.get_node_list())
    if not isinstance(node_list, list):
        raise PackError(f"get_node_list() returned {type(node_list).__name__}, not a list of node classes")
    registered = []
    for cls in node_list:
        schema = cls.GET_SCHEMA()
        cls.RELATIVE_PYTHON_MODULE = python_module
        if registry.register(schema.node_id, cls, schema.display_name, python_module, builtin=False):
            registered.append(schema.node_id)
    return registered


def _web_directory(module: ModuleType, path: Path) -> dict[str, str]:
    """The pack's web folders by the name ComfyUI serves them under (/extensions/<name>/): its
    pyproject.toml's [tool.comfy] web under the project's name, then WEB_DIRECTORY under the
    pack's own name; only folders that exist."""
    pack_dir = path if path.is_dir() else path.parent
    found: dict[str, str] = {}
    if tomllib is not None and path.is_dir() and (path / "pyproject.toml").is_file():
        try:
            project = tomllib.loads((path / "pyproject.toml").read_text(encoding="utf-8"))
            rel = project.get("tool", {}).get("comfy", {}).get("web")
            project_name = project.get("project", {}).get("name") or path.name
        except (OSError, tomllib.TOMLDecodeError, AttributeError) as exc:
            logger.warning("%s: cannot read pyproject.toml: %s", path, exc)
            rel = project_name = None
        if isinstance(rel, str) and rel and isinstance(project_name, str) and (pack_dir / rel).is_dir():
            found[project_name] = str((pack_dir / rel).resolve())
    rel = getattr(module, "WEB_DIRECTORY", None)
    if isinstance(rel, str) and rel and (pack_dir / rel).is_dir():
        found[path.stem if path.is_file() else path.name] = str((pack_dir / rel).resolve())
    return found
