"""Example custom node pack: small text utilities, written in ComfyUI's classic contract.

It doubles as a template: copy this folder, rename it, and replace the nodes.
"""
from .text_nodes import ShowText, TextCase

NODE_CLASS_MAPPINGS = {"TextCase": TextCase, "ShowText": ShowText}
NODE_DISPLAY_NAME_MAPPINGS = {"TextCase": "Text Case", "ShowText": "Show Text"}
# Every .js file in here is served under /extensions/example_pack/ and loaded by the editor.
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
