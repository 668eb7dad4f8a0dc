"""LatentGraph's HTTP and websocket server: ComfyUI's API over the graph engine.

As ComfyUI's module `server`, it also gives plugins PromptServer and BinaryEventTypes.
"""
from server.prompt_server import BinaryEventTypes, PromptServer

__all__ = ["BinaryEventTypes", "PromptServer"]
