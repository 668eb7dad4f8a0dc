"""`from comfy_execution.graph_utils import GraphBuilder, is_link` (ComfyUI's path; ComfyUI also
keeps ExecutionBlocker here)."""
from graph.blocker import ExecutionBlocker
from graph.graph_builder import GraphBuilder, Node, add_graph_prefix, is_link

__all__ = ["GraphBuilder", "Node", "add_graph_prefix", "is_link", "ExecutionBlocker"]
