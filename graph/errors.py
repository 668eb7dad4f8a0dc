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
    """Render an {error, node_errors} document as readable lines (for the command line)."""
    err = doc.get("error") or {}
    lines = [f"{err.get('message', 'error')}" + (f": {err['details']}" if err.get("details") else "")]
    for node_id, entry in (doc.get("node_errors") or {}).items():
        for e in entry.get("errors", []):
            where = f"node {node_id} ({entry.get('class_type')})"
            name = (e.get("extra_info") or {}).get("input_name")
            if name:
                where += f", input '{name}'"
            lines.append(f"  {where}: {e.get('message')}" + (f" - {e['details']}" if e.get("details") else ""))
    return "\n".join(lines)
