"""ComfyUI's `comfy_api` package for plugins: the versioned node API (V3 schema, progress)."""
