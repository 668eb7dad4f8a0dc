"""`from comfy_execution.graph import ExecutionBlocker` (ComfyUI's path)."""
from graph.blocker import ExecutionBlocker

__all__ = ["ExecutionBlocker"]
