"""ComfyUI's `comfy` package, for plugins: the parts of its Python API that LatentGraph provides,
each a real implementation over the running engine (see docs/plugins-engine.md)."""
