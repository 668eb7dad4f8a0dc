"""Flags, folders, plugin loading, the command line and the wiring of one runtime."""
from app.compat import ensure_importable

ensure_importable()  # plugins import ComfyUI's module names (comfy, folder_paths, ...) from compat/
