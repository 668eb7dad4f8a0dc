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
