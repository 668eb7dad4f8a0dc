"""VAE nodes: pixels to latents and back."""
from __future__ import annotations

from graph.contract import Node, Output, Socket


class VAEDecode(Node):
    display_name = "VAE Decode"
    comfy_function = "decode"
    category = "latent"
    inputs = (Socket("samples", "LATENT"), Socket("vae", "VAE"))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, vae, samples):
        return (vae.decode(samples["samples"]),)


class VAEEncode(Node):
    display_name = "VAE Encode"
    comfy_function = "encode"
    category = "latent"
    inputs = (Socket("pixels", "IMAGE"), Socket("vae", "VAE"))
    outputs = (Output("LATENT"),)

    def run(self, ctx, vae, pixels):
        return ({"samples": vae.encode(pixels)},)


NODES = [VAEDecode, VAEEncode]
