"""What the server console and the command line tell the user, in ComfyUI's words where ComfyUI
has them: the start-up report (device, precision, folders and their file counts, extra model
paths), and per prompt "got prompt", validation failures, "Prompt executed in N seconds" and
the files a prompt saved.
"""
from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Callable, Iterable

from graph.errors import format_errors

log = logging.getLogger("latentgraph")

# Model folders named in the start-up report even when empty: the ones a first workflow needs.
ALWAYS_SHOWN = ("checkpoints",)


class ConsoleFormatter(logging.Formatter):
    """Plain messages for INFO, as ComfyUI's console; the level and logger name otherwise."""

    def __init__(self):
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO:
            text = record.getMessage()
            return text + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")
        return super().format(record)


def setup_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:  # a host (pytest, an embedding program) may have set logging up already
        handler = logging.StreamHandler()
        handler.setFormatter(ConsoleFormatter())
        root.addHandler(handler)
    root.setLevel(getattr(logging, level, logging.INFO))


# -- start-up ------------------------------------------------------------------------------------

def _gib(n: int) -> str:
    return f"{n / 2**30:.0f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def _total_ram() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def device_lines(policy) -> list[str]:
    """Python and torch, the compute device, and the dtype of each model part."""
    import torch

    lines = [f"Python {platform.python_version()}, torch {torch.__version__}"]
    device = policy.load_device
    ram = _total_ram()
    ram_text = f", total RAM {_gib(ram)}" if ram else ""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"Device: {device} {props.name} ({_gib(props.total_memory)} VRAM){ram_text}")
    else:
        cuda_note = " (CUDA is available: drop --cpu to use it)" if torch.cuda.is_available() else ""
        lines.append(f"Device: cpu, {torch.get_num_threads()} threads{ram_text}{cuda_note}")
    name = lambda dtype: str(dtype).removeprefix("torch.").replace("float", "fp").replace("bfp", "bf")  # noqa: E731
    text_compute = " (computed in fp32)" if policy.text_dtype != torch.float32 else ""
    lines.append(f"Precision: UNet {name(policy.unet_dtype)}, text encoder {name(policy.text_dtype)}{text_compute}, "
                 f"VAE {name(policy.vae_dtype)}")
    lines.extend(f"Note: {note}" for note in policy.notes)
    return lines


def folder_lines(folders, keys: Iterable[str] | None = None) -> list[str]:
    """The base directory, each model folder key with files (and the ones a first run needs)
    with its file count and any folders outside models/, then input/ and output/."""
    models = folders.base / "models"
    lines = [f"Base directory: {folders.base}", f"Model folders ({models}):"]
    empty = []
    for key in keys if keys is not None else folders.folder_keys():
        if key == "custom_nodes":
            continue
        count = len(folders.filenames(key))
        if not count and key not in ALWAYS_SHOWN:
            empty.append(key)
            continue
        elsewhere = [str(d) for d in folders.model_dirs(key)
                     if not Path(d).is_relative_to(models) and not Path(d).is_relative_to(folders.output_dir)]
        lines.append(f"  {key}: {count} file{'' if count == 1 else 's'}"
                     + (f" (also from {', '.join(elsewhere)})" if elsewhere else ""))
    if empty:
        lines.append(f"  empty: {', '.join(empty)}")
    if not folders.filenames("checkpoints"):
        lines.append(f"No checkpoints yet: put SD1.5 or SDXL .safetensors files in "
                     f"{folders.model_dirs('checkpoints')[0]} (README.md, 'Models')")
    images = len(folders.input_images())
    lines.append(f"Input folder: {folders.input_dir} ({images} image{'' if images == 1 else 's'})")
    lines.append(f"Output folder: {folders.output_dir}")
    return lines


def added_paths(before: dict[str, list[Path]], folders) -> list[str]:
    """ComfyUI's line for each directory an extra_model_paths.yaml added, in the order added."""
    lines = []
    for key in folders.folder_keys():
        known = before.get(key, [])
        lines.extend(f"Adding extra search path {key} {d}" for d in folders.model_dirs(key) if d not in known)
    return lines


def snapshot_dirs(folders) -> dict[str, list[Path]]:
    return {key: folders.model_dirs(key) for key in folders.folder_keys()}


# -- per prompt ----------------------------------------------------------------------------------

def saved_files(folders, outputs: dict[str, dict], types: tuple[str, ...] = ("output", "temp")) -> list[Path]:
    """Files the run's output nodes report in their UI (images, and any other file lists)."""
    paths = []
    for ui in outputs.values():
        for items in ui.values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item and item.get("type") in types:
                    root = folders.typed_dir(item["type"])
                    paths.append(root / item.get("subfolder", "") / item["filename"])
    return paths


def report_validation(doc: dict, ok: bool, say: Callable[[str], None]) -> None:
    """After "got prompt": the errors of an invalid prompt, or the outputs a valid one leaves out."""
    if not ok:
        say("invalid prompt: " + format_errors(doc))
    elif doc.get("node_errors"):
        say("\n".join(format_errors(doc).splitlines()[1:]))


def report_run(result, seconds: float, folders, say: Callable[[str], None]) -> None:
    """After a prompt ran: its failure (with the node's traceback), the time, the saved files."""
    if result.status == "error" and result.error:
        err = result.error
        say(f"!!! Exception during processing !!! {err.get('exception_type', 'Error')}: "
            f"{err.get('exception_message', '')} (node {err.get('node_id')}, {err.get('node_type')})")
        trace = "".join(err.get("traceback") or []).rstrip()
        if trace:
            say(trace)
    elif result.status == "interrupted":
        say("Processing interrupted")
    say(f"Prompt executed in {seconds:.2f} seconds")
    for path in saved_files(folders, result.outputs, ("output",)) if folders is not None else []:
        say(f"Saved {path}")
