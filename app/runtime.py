"""Wiring: folders, the node registry with built-in and custom nodes, and the executor."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from app import compat, console
from app.args import REPO_ROOT
from app.env import Environment
from app.folders import FolderPaths, builtin_models_listed
from app.plugins import PackResult, load_custom_nodes
from diffusion.device import DevicePolicy, inference_mode
from diffusion.model_management import MemoryOptions, ModelManagement
from graph.cache import make_cache
from graph.executor import Executor
from graph.registry import NodeRegistry
from nodes import register_builtin_nodes
from server.prompt_server import PromptServer


@dataclass
class Runtime:
    env: Environment
    registry: NodeRegistry
    executor: Executor
    packs: list[PackResult] = field(default_factory=list)
    args: argparse.Namespace | None = None
    plugin_server: Any = None  # server.PromptServer for plugins; served only by `main.py` (server mode)


def create_runtime(args: argparse.Namespace, log=print, exclusive: bool = False, claim: bool = True) -> Runtime:
    """`exclusive` (the server): FoldersBusy when another process holds the folders, raised
    before anything in them is touched. `claim` False (a cluster worker, which serves a server
    that holds them): neither lock the folders nor empty temp/."""
    console.setup_logging(args.verbose)
    folders = FolderPaths(args.base_directory, output_directory=args.output_directory,
                          input_directory=args.input_directory, temp_directory=args.temp_directory,
                          user_directory=args.user_directory, builtin_models=builtin_models_listed())
    if claim:
        folders.claim(exclusive)
    before = console.snapshot_dirs(folders)
    for config in extra_model_paths_configs(args):
        folders.load_extra_model_paths(config)
    for line in console.added_paths(before, folders):
        log(line)
    policy = DevicePolicy.from_args(args)
    for line in console.device_lines(policy):
        log(line)
    models = ModelManagement(policy, MemoryOptions.from_args(args, policy.load_device))
    env = Environment(folders, {"disable_metadata": args.disable_metadata}, models)
    registry = NodeRegistry(env)
    register_builtin_nodes(registry)
    executor = Executor(registry, make_cache(args.cache), call_context=inference_mode)
    max_upload = int(getattr(args, "max_upload_size", 100) * 1024 * 1024)  # as ServerConfig reads it
    runtime = Runtime(env, registry, executor, args=args, plugin_server=PromptServer(client_max_size=max_upload))
    compat.bind(runtime)  # before packs import: they call folder_paths & co. at import time
    if not args.disable_all_custom_nodes:
        dirs = [REPO_ROOT / "custom_nodes"] + [d for d in folders.custom_nodes_dirs
                                               if d.resolve() != (REPO_ROOT / "custom_nodes").resolve()]
        runtime.packs = load_custom_nodes(registry, dirs, log=log)
    for line in console.folder_lines(folders):
        log(line)
    return runtime


def extra_model_paths_configs(args: argparse.Namespace) -> list:
    """extra_model_paths.yaml beside main.py (read without a flag, as ComfyUI does), then the
    --extra-model-paths-config files."""
    beside = REPO_ROOT / "extra_model_paths.yaml"
    return ([beside] if beside.is_file() else []) + list(args.extra_model_paths_config)
