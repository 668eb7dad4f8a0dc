"""Writes reference.safetensors beside this file: ComfyUI's own outputs for the cases of
tests/comfy_node_cases.py. Run with ComfyUI's interpreter from this checkout's root:

    /work/ref/venv/bin/python tests/data/comfy_nodes/make_reference.py /work/ref/ComfyUI

(ComfyUI commit a125cd84, CPU torch 2.13.0, Pillow 13.0.0, kornia 0.9.0.) It runs ComfyUI's node
classes (V3 `execute` or classic FUNCTION) on the cases' inputs, comfy.utils.tiled_scale on the
tiling cases, and comfy.sd.VAE's tiled decode/encode and the VAEDecodeTiled/VAEEncodeTiled nodes
over the tiny test VAE. Output tensors go in as tensors ("<case>/out/<i>"); strings, numbers,
booleans, batch indices and a fingerprint of every input tensor ("<case>/in": {name: [sum, sum of
squares]}) go in the metadata as JSON.
"""
import importlib.util
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
COMFY = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(COMFY))
sys.path.append(str(REPO))  # after ComfyUI: only our `diffusion` package is taken from here


def load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI reads its flags at import
import types  # noqa: E402

# nodes_images imports the server only to show GetImageSize's text on the node, which these calls
# (no unique_id) never do; the server's own imports are not all installed in the reference venv.
sys.modules.setdefault("server", types.SimpleNamespace(PromptServer=None))
import comfy.model_management  # noqa: E402  (ComfyUI first, so it imports torchvision its way)
import comfy.model_patcher  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
import nodes  # noqa: E402

cases = load_by_path("lg_comfy_node_cases", REPO / "tests" / "comfy_node_cases.py")
models_tiny = load_by_path("lg_models_tiny", REPO / "tests" / "models_tiny.py")
from diffusion.vae import AutoencoderKL, VAEConfig  # noqa: E402  (ours: the tiny test VAE)

MODULES = ["comfy_extras.nodes_post_processing", "comfy_extras.nodes_images", "comfy_extras.nodes_morphology",
           "comfy_extras.nodes_mask", "comfy_extras.nodes_compositing", "comfy_extras.nodes_latent",
           "comfy_extras.nodes_string"]


def node_classes() -> dict:
    classes = dict(nodes.NODE_CLASS_MAPPINGS)
    for name in MODULES:
        module = importlib.import_module(name)
        classes.update(getattr(module, "NODE_CLASS_MAPPINGS", {}))
        entry = getattr(module, "comfy_entrypoint", None)
        if entry is not None:
            import asyncio

            extension = asyncio.run(entry())
            for cls in asyncio.run(extension.get_node_list()):
                classes[cls.define_schema().node_id] = cls
    return classes


CLASSES = node_classes()


def call(node: str, inputs: dict) -> tuple:
    cls = CLASSES[node]
    inputs = {k: (call(v.node, v.inputs)[0] if isinstance(v, cases.Call) else v) for k, v in inputs.items()}
    inputs = {k: (dict(v) if isinstance(v, dict) else v) for k, v in inputs.items()}
    if hasattr(cls, "define_schema"):
        out = cls.execute(**inputs)
        return tuple(out.args)
    out = getattr(cls(), cls.FUNCTION)(**inputs)
    return tuple(out["result"]) if isinstance(out, dict) else tuple(out)


tensors: dict[str, torch.Tensor] = {}
meta: dict[str, object] = {}


def fingerprint(tensor: torch.Tensor) -> list[float]:
    return [float(tensor.double().sum()), float((tensor.double() ** 2).sum())]


def store(case: str, index: int, value) -> None:
    key = f"{case}/out/{index}"
    if isinstance(value, torch.Tensor):
        tensors[key] = value.float().clone().contiguous()
    elif isinstance(value, dict):  # a LATENT
        tensors[key] = value["samples"].float().clone().contiguous()
        meta[key] = {"latent": True, "batch_index": value.get("batch_index")}
    else:
        meta[key] = {"value": value}


for case, node, inputs in cases.all_cases():
    meta[f"{case}/in"] = {name: fingerprint(value) for name, value in inputs.items() if isinstance(value, torch.Tensor)}
    for index, value in enumerate(call(node, inputs)):
        store(case, index, value)

for case, x, tile, overlap, scale, channels in cases.TILING_CASES:
    out = comfy.utils.tiled_scale(x, cases.tile_function(scale, channels), tile_x=tile[1], tile_y=tile[0],
                                  overlap=overlap, upscale_amount=scale, out_channels=channels)
    meta[f"tiling_{case}/in"] = {"x": fingerprint(x)}
    tensors[f"tiling_{case}/out/0"] = out.contiguous()


class TinyFirstStage(torch.nn.Module):
    """Our tiny AutoencoderKL behind the decode/encode methods ComfyUI's VAE class calls."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def decode(self, z):
        return self.vae.decode_raw(z)

    def encode(self, x):
        return self.vae.encode_mean(x)


class TinyVAE(comfy.sd.VAE):
    """comfy.sd.VAE's own methods over the tiny VAE, with the attributes its __init__ would set
    for an SD-style KL autoencoder."""

    def __init__(self, first_stage):
        self.first_stage_model = first_stage.eval()
        self.device = self.output_device = torch.device("cpu")
        self.vae_dtype = torch.float32
        self.upscale_ratio = self.downscale_ratio = 8
        self.latent_channels, self.output_channels, self.latent_dim = 4, 3, 2
        self.upscale_index_formula = self.downscale_index_formula = None
        self.extra_1d_channel = None
        self.crop_input, self.not_video, self.disable_offload = True, False, False
        self.process_input = lambda image: image * 2.0 - 1.0
        self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
        self.memory_used_decode = lambda shape, dtype: 1 << 20
        self.memory_used_encode = lambda shape, dtype: 1 << 20
        self.patcher = comfy.model_patcher.ModelPatcher(self.first_stage_model, load_device=self.device,
                                                        offload_device=self.device)


tiny = models_tiny.randomize_(AutoencoderKL(VAEConfig(base_channels=32, channel_mult=(1, 1, 1, 1),
                                                      num_res_blocks=1)), cases.VAE_SEED).eval()
vae = TinyVAE(TinyFirstStage(tiny))
with torch.inference_mode():
    tensors["vae_decode_tiled_default/out/0"] = vae.decode_tiled(cases.VAE_LATENT).contiguous()
    tensors["vae_encode_tiled_default/out/0"] = vae.encode_tiled(cases.VAE_PIXELS[..., :3]).contiguous()
    for node, tile_size, overlap in cases.VAE_NODE_CASES:
        if node == "VAEDecodeTiled":
            out = nodes.VAEDecodeTiled().decode(vae, {"samples": cases.VAE_LATENT}, tile_size, overlap)[0]
        else:
            out = nodes.VAEEncodeTiled().encode(vae, cases.VAE_PIXELS, tile_size, overlap)[0]["samples"]
        tensors[f"{node}_{tile_size}_{overlap}/out/0"] = out.contiguous()
meta["vae/in"] = {"latent": fingerprint(cases.VAE_LATENT), "pixels": fingerprint(cases.VAE_PIXELS)}

save_file(tensors, str(HERE / "reference.safetensors"), metadata={"json": json.dumps(meta)})
print(f"{len(tensors)} tensors, {len(meta)} other values -> {HERE / 'reference.safetensors'}")
