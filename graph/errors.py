"""Structured errors in ComfyUI's shapes, so clients written for ComfyUI can show them."""
from __future__ import annotations

from typing import Any


class PromptError(Exception):
    """A prompt that cannot run, carrying ComfyUI's {error, node_errors} document."""

    def __init__(self, error: dict, node_errors: dict | None = None):
        super().__init__(error.get("message", "invalid prompt"))
        self.error = error
        self.node_errors = node_errors or {}

    def as_dict(self) -> dict:
        return {"error": self.error, "node_errors": self.node_errors}


OOM_HINT = ("This error means the device ran out of memory.\n\nTIPS: lower what this node has to hold at once: "
            "the batch_size, the width and height (or the upscale factor), the number of images in a batch; "
            "if the workflow worked before, a batch_size may have been set too high by accident. Starting with "
            "--lowvram (or --novram) loads models in parts. All models were unloaded, so the next prompt "
            "starts with the memory free.")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA, MPS, XPU), Python's MemoryError, or a CPU allocation failure."""
    if isinstance(exc, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text)


def exception_message(exc: BaseException) -> str:
    """What an execution_error says about a node's exception; out-of-memory errors get a hint."""
    message = str(exc) or type(exc).__name__
    return f"{message}\n{OOM_HINT}" if is_out_of_memory(exc) else message


def error(type: str, message: str, details: str = "", **extra_info: Any) -> dict:
    return {"type": type, "message": message, "details": details, "extra_info": extra_info}


def input_error(type: str, message: str, details: str, input_name: str | None = None,
                input_config: Any = None, **extra: Any) -> dict:
    extra_info = {"input_name": input_name} if input_name is not None else {}
    if input_config is not None:
        extra_info["input_config"] = input_config
    extra_info.update(extra)
    return {"type": type, "message": message, "details": details, "extra_info": extra_info}


def describe_value(value: Any, limit: int = 200) -> str:
    """A short, safe rendering of a received value for error details."""
    try:
        text = repr(value)
    except Exception as exc:  # deeply nested (RecursionError) or hostile objects
        return f"<unprintable {type(value).__name__}: {type(exc).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_errors(doc: dict) -> str:
    """Render an {error, node_errors} document as ComfyUI's console does, each error once:
    the failing nodes grouped under the outputs they feed, one line per error."""
    err = doc.get("error") or {}
    node_errors = doc.get("node_errors") or {}
    details = err.get("details") if not node_errors else ""  # the details repeat the node errors
    lines = [f"{err.get('message', 'error')}" + (f": {details}" if details else "")]
    groups: dict[tuple, list] = {}
    for node_id, entry in node_errors.items():
        groups.setdefault(tuple(entry.get("dependent_outputs") or ()), []).append((node_id, entry))
    for outputs, entries in groups.items():
        if outputs:
            lines.append(f"Failed to validate prompt for output {', '.join(outputs)}:")
        for node_id, entry in entries:
            lines.append(f"* {entry.get('class_type')} {node_id}:")
            for e in entry.get("errors", []):
                lines.append(f"  - {e.get('message')}" + (f": {e['details']}" if e.get("details") else ""))
        if outputs:
            lines.append("Output will be ignored")
    return "\n".join(lines)
