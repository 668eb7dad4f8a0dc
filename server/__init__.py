"""LatentGraph's HTTP and websocket server: ComfyUI's API over the graph engine."""
