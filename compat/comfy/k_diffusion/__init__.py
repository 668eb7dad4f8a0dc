"""ComfyUI's copy of k-diffusion (`comfy.k_diffusion`), for plugins: our samplers under its names."""
