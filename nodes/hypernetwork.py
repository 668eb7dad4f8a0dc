"""HypernetworkLoader: A1111 hypernetworks on a MODEL's attention layers."""
from __future__ import annotations

from diffusion.hypernetwork import apply_hypernetwork, load_hypernetwork
from graph.contract import Combo, Float, Node, Output, Socket
from nodes.loaders import model_file


class HypernetworkLoader(Node):
    """A clone of the model whose self- and cross-attention keys and values go through the
    hypernetwork's MLPs, scaled by strength."""

    display_name = "HypernetworkLoader"
    comfy_function = "load_hypernetwork"
    comfy_module = "comfy_extras.nodes_hypernetwork"
    category = "loaders"
    inputs = (Socket("model", "MODEL"), Combo("hypernetwork_name", lambda env: env.folders.filenames("hypernetworks")),
              Float("strength", 1.0, min=-10.0, max=10.0, step=0.01))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, hypernetwork_name, strength):
        patch = load_hypernetwork(model_file(ctx, "hypernetworks", hypernetwork_name), strength)
        return (apply_hypernetwork(model, patch),)


NODES = [HypernetworkLoader]
