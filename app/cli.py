"""`python main.py run WORKFLOW ...`: run workflow files in one process that shares the cache."""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import TextIO

from app.console import saved_files
from app.folders import UnsafePath, safe_join
from app.runtime import Runtime
from graph.errors import PromptError, format_errors
from graph.prompt import unwrap
from graph.workflow_file import WorkflowFileError, read_workflow_file

# Input options that mark a file in input/ (ComfyUI's upload widgets).
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")


class ProgressPrinter:
    """Draws the executor's events on a terminal stream: one line per node, a bar per step."""

    def __init__(self, prompt: dict, stream: TextIO = sys.stderr, width: int = 30):
        self.prompt = prompt
        self.stream = stream
        self.width = width
        self.bar_open = False
        self.started = time.perf_counter()

    def __call__(self, event: str, data: dict) -> None:
        handler = getattr(self, "on_" + event, None)
        if handler:
            handler(data)

    def _line(self, text: str) -> None:
        if self.bar_open:
            self.stream.write("\n")
            self.bar_open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def _title(self, node_id: str, display_node: str | None = None) -> str:
        node = self.prompt.get(node_id)
        if node is None and display_node in self.prompt:  # a node added by expansion
            return f"{node_id} (expanded from {self._title(display_node)})"
        return f"{node_id} {(node or {}).get('class_type', '?')}"

    def on_execution_cached(self, data: dict) -> None:
        if data["nodes"]:
            self._line(f"  cached: {len(data['nodes'])} node(s) ({', '.join(data['nodes'][:12])}"
                       f"{', ...' if len(data['nodes']) > 12 else ''})")

    def on_executing(self, data: dict) -> None:
        if data.get("node") is not None:
            self._line(f"  running {self._title(data['node'], data.get('display_node'))}")

    def on_progress(self, data: dict) -> None:
        total = max(data["max"], 1)
        done = int(self.width * min(data["value"], total) / total)
        self.stream.write(f"\r    [{'#' * done}{'.' * (self.width - done)}] {data['value']}/{data['max']}")
        self.stream.flush()
        self.bar_open = True

    def on_execution_error(self, data: dict) -> None:
        self._line(f"  error in node {data['node_id']} ({data['node_type']}): "
                   f"{data['exception_type']}: {data['exception_message']}")
        self.stream.write("".join(data["traceback"][-3:]))

    def on_execution_interrupted(self, data: dict) -> None:
        self._line(f"  interrupted in node {data.get('node_id')}")

    def finished(self) -> None:
        self._line(f"  Prompt executed in {time.perf_counter() - self.started:.2f} seconds")


def upload_inputs(prompt: dict, object_info: dict) -> list[tuple[str, str]]:
    """(node id, file name) of every literal naming a file of input/ (LoadImage's image, ...)."""
    found = []
    for node_id, node in prompt.items():
        info = object_info.get(node.get("class_type")) if isinstance(node, dict) else None
        inputs = node.get("inputs") if info else None
        if not isinstance(inputs, dict):
            continue
        declared = {**(info["input"].get("required") or {}), **(info["input"].get("optional") or {})}
        for name, value in inputs.items():
            spec = declared.get(name)
            options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
            value = unwrap(value)
            if isinstance(value, str) and value and any(options.get(k) for k in UPLOAD_OPTIONS):
                found.append((node_id, value))
    return found


def bring_inputs(runtime: Runtime, prompt: dict, workflow_file: Path, err: TextIO) -> None:
    """Copy input files a workflow names from beside the workflow file into input/ when input/
    lacks them, so shipped examples (examples/*.json with their images) run as they are."""
    input_dir = runtime.env.folders.input_dir
    for _node_id, name in upload_inputs(prompt, runtime.registry.describe_all()):
        try:
            target = runtime.env.folders.annotated_path(name)
            source = safe_join(workflow_file.parent, name)
        except (UnsafePath, ValueError):
            continue  # validation reports the name
        if target.exists() or not source.is_file() or not target.is_relative_to(input_dir):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        err.write(f"  copied {source} into the input folder ({target})\n")


def run_workflows(runtime: Runtime, files: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run each file in turn; returns the exit code (0 when every workflow succeeded)."""
    if not files:
        err.write("run: give at least one workflow file (API JSON, UI JSON, or PNG)\n")
        return 2
    failures = 0
    for name in files:
        err.write(f"{name}\n")
        try:
            doc = read_workflow_file(name)
            prompt = doc.to_api(runtime.registry.describe_all())
            bring_inputs(runtime, prompt, Path(name), err)
            printer = ProgressPrinter(prompt, err)
            result = runtime.executor.run(prompt, extra_data=doc.extra_data(), emit=printer)
        except WorkflowFileError as exc:
            err.write(f"  error: {exc}\n")
            failures += 1
            continue
        except PromptError as exc:
            err.write("  invalid workflow: " + format_errors(exc.as_dict()).replace("\n", "\n  ") + "\n")
            failures += 1
            continue
        except Exception as exc:  # a bug below must not abandon the rest of the batch
            err.write(f"  internal error: {type(exc).__name__}: {exc}\n")
            failures += 1
            continue
        printer.finished()
        if not result.ok:
            failures += 1
        for path in saved_files(runtime.env.folders, result.outputs):
            out.write(f"{path}\n")
        for node_id, ui in result.outputs.items():
            for text in ui.get("text", []) if isinstance(ui.get("text"), list) else []:
                out.write(f"{node_id}: {text}\n")
    if len(files) > 1:
        err.write(f"{len(files) - failures} of {len(files)} workflow(s) succeeded\n")
    return 1 if failures else 0
