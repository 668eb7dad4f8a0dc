"""VAE nodes: pixels to latents and back."""
from __future__ import annotations

from graph.contract import Node, Output, Socket


class VAEDecode(Node):
    display_name = "VAE Decode"
    category = "latent"
    inputs = (Socket("samples", "LATENT"), Socket("vae", "VAE"))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, samples, vae):
        return (vae.decode(samples["samples"]),)


class VAEEncode(Node):
    display_name = "VAE Encode"
    category = "latent"
    inputs = (Socket("pixels", "IMAGE"), Socket("vae", "VAE"))
    outputs = (Output("LATENT"),)

    def run(self, ctx, pixels, vae):
        return ({"samples": vae.encode(pixels)},)


NODES = [VAEDecode, VAEEncode]
