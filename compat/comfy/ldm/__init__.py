"""ComfyUI's `comfy.ldm`: the network modules plugins reach into."""
