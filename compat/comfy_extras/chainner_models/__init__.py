"""ComfyUI's old upscale-model package path; spandrel does the work, as in ComfyUI."""
