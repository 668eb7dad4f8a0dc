"""The test suite (a package, so its helper modules never shadow the ComfyUI module names plugins import, such as node_helpers)."""
