"""Writes comfyui_reference.safetensors beside this file: ComfyUI's outputs for the cases of
tests/loader_cases.py, compared with ours by tests/test_loader_parity.py. Run with ComfyUI's
interpreter from this checkout's root:

    /work/ref/venv/bin/python tests/data/loaders/make_reference.py /work/ref/ComfyUI

(ComfyUI commit a125cd84, CPU torch 2.13.0, transformers 5.25.0, flags --cpu --fp32-text-enc: ComfyUI
keeps CLIP vision weights in fp16 on the CPU by default, ours in float32.) It calls ComfyUI's own
code on the cases' weights and tensors:

* CLIP vision: comfy.clip_vision.ClipVisionModel built from a JSON config describing the tiny
  tower (the form of ComfyUI's clip_vision_config_*.json), weights loaded with its load_sd,
  encode_image with crop on and off; comfy.clip_vision.convert_to_transformers on the tower in
  OpenCLIP layout; comfy.clip_vision.clip_preprocess.
* Style model: comfy.t2i_adapter.adapter.StyleAdapter of the tiny size holding the file's
  weights, through comfy.sd.StyleModel and the StyleModelApply node (both strength types).
* GLIGEN: comfy.gligen.load_gligen on the file's tensors; its set_position / set_empty patches
  inside ComfyUI's UNetModel (built by comfy.model_detection.detect_unet_config from the tiny
  SD1.5 UNet's weights, 8 heads as ComfyUI's SD15 config), through transformer_options
  "middle_patch"; also the UNet without patches.
* Hypernetwork: comfy_extras.nodes_hypernetwork.load_hypernetwork_patch on the .pt file, as
  attn1/attn2 patches of the same UNet.
* unCLIP: comfy.model_base.unclip_adm (SD2.1 unCLIP's noise augmentor, merge 0.05, seed - 10 as
  SD21UNCLIP.encode_adm passes it) and comfy.model_base.sdxl_pooled.
* LoRA extraction: comfy_extras.nodes_lora_extract.extract_lora.
* Union ControlNet: comfy.cldm.cldm.ControlNet built from the weights' config the way
  comfy.controlnet loads a ControlNet (model_config_from_unet(..., True) + union types), with the
  file's union keys renamed as ComfyUI renames them, run for each control type.
* InstructPix2Pix: the InstructPixToPixConditioning node over comfy.sd.VAE holding the tiny
  SD1.5 checkpoint's VAE (its config given: ComfyUI's detection assumes the
  released widths), in float32; comfy.model_base.IP2P.concat_cond. SD x4: SD_4XUpscale_Conditioning.

Output tensors are stored under "<case>/..." names; metadata "cases" lists them.
"""
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
COMFY = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(COMFY))
sys.path.append(str(REPO))  # after ComfyUI: only our test builders and `diffusion` come from here

import comfy.options

comfy.options.enable_args_parsing()
# ComfyUI stores text encoders and CLIP vision towers in fp16 even on the CPU unless told otherwise;
# our CPU policy keeps them in float32, so the comparison is of the same float32 weights
sys.argv = [sys.argv[0], "--cpu", "--fp32-text-enc"]
sys.modules.setdefault("server", types.SimpleNamespace(PromptServer=None))
import comfy.cldm.cldm
import comfy.clip_vision
import comfy.gligen
import comfy.model_base
import comfy.model_detection
import comfy.model_management
import comfy.ops
import comfy.sd
import comfy.t2i_adapter.adapter
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from comfy.ldm.modules.encoders.noise_aug_modules import CLIPEmbeddingNoiseAugmentation
from comfy_extras import nodes_hypernetwork, nodes_ip2p, nodes_lora_extract, nodes_sdupscale

import nodes


def load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ComfyUI has a `tests` package of its own: our test modules are registered under their names first
load_by_path("tests.models_tiny", REPO / "tests" / "models_tiny.py")
cases = load_by_path("tests.loader_cases", REPO / "tests" / "loader_cases.py")
OUT: dict[str, torch.Tensor] = {}


def put(name: str, value: torch.Tensor) -> None:
    OUT[name] = value.detach().float().contiguous().clone()


def v3(node_cls, **inputs):
    out = node_cls.execute(**inputs)
    return out.result if hasattr(out, "result") else out


@torch.no_grad()
def clip_vision() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "tiny.json"
        config.write_text(json.dumps(cases.clip_vision_comfy_config()))
        model = comfy.clip_vision.ClipVisionModel(str(config))
    missing, unexpected = model.load_sd(cases.clip_vision_state_dict())
    assert not missing and not unexpected, (missing, unexpected)
    for name, image in cases.CLIP_VISION_IMAGES.items():
        for crop in (True, False):
            out = model.encode_image(image, crop=crop)
            tag = f"clip_vision/{name}/{'center' if crop else 'none'}"
            put(f"{tag}/last_hidden_state", out.last_hidden_state)
            put(f"{tag}/penultimate_hidden_states", out.penultimate_hidden_states)
            put(f"{tag}/image_embeds", out.image_embeds)
            put(f"clip_preprocess/{name}/{'center' if crop else 'none'}",
                comfy.clip_vision.clip_preprocess(image, size=28, crop=crop))
    # the OpenCLIP layout as ComfyUI converts it
    from diffusion.clip_vision import transformers_to_openclip
    openclip = {"visual." + k: v for k, v in transformers_to_openclip(cases.clip_vision_state_dict()).items()}
    converted = comfy.clip_vision.convert_to_transformers(dict(openclip), "visual.")
    for key, value in converted.items():
        put(f"clip_vision_openclip/{key}", value)


@torch.no_grad()
def style_model() -> None:
    s = cases.STYLE
    adapter = comfy.t2i_adapter.adapter.StyleAdapter(width=s["width"], context_dim=s["context"], num_head=8,
                                                     n_layes=s["layers"], num_token=s["tokens"])
    adapter.load_state_dict(cases.style_model_state_dict())
    style = comfy.sd.StyleModel(adapter)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "tiny.json"
        config.write_text(json.dumps(cases.clip_vision_comfy_config()))
        vision = comfy.clip_vision.ClipVisionModel(str(config))
    vision.load_sd(cases.clip_vision_state_dict())
    encoded = vision.encode_image(cases.CLIP_VISION_IMAGES["wide"], crop=True)
    put("style/get_cond", style.get_cond(encoded))
    conditioning = [[cases.STYLE_PROMPT, {"pooled_output": torch.zeros(1, 768)}]]
    for strength_type, strength in (("multiply", 0.6), ("attn_bias", 0.5), ("attn_bias", 1.0)):
        (out,) = nodes.StyleModelApply().apply_stylemodel(conditioning, style, encoded, strength, strength_type)
        tag = f"style/apply/{strength_type}/{strength}"
        put(f"{tag}/cond", out[0][0])
        if "attention_mask" in out[0][1]:
            put(f"{tag}/attention_mask", out[0][1]["attention_mask"])


def comfy_unet(unet_sd):
    config = comfy.model_detection.detect_unet_config(unet_sd, "model.diffusion_model.")
    config.update(num_heads=8, num_head_channels=-1)  # ComfyUI's SD15 unet_extra_config
    unet = UNetModel(**config, device="cpu", operations=comfy.ops.disable_weight_init)
    prefix = "model.diffusion_model."
    unet.load_state_dict({k[len(prefix):]: v for k, v in unet_sd.items()})
    return unet.eval()


@torch.no_grad()
def unet_patches() -> None:
    unet_sd = cases.sd15_unet_state_dict()
    unet = comfy_unet(unet_sd)

    def run(patches):
        return unet(cases.UNET_X, cases.UNET_T, cases.UNET_CONTEXT,
                    transformer_options={"patches": patches} if patches else {})

    put("unet/plain", run({}))
    gligen = comfy.gligen.load_gligen(cases.gligen_state_dict(unet_sd))
    boxes = [(pooled, h, w, y, x) for pooled, h, w, y, x in cases.GLIGEN_BOXES]
    put("unet/gligen_position", run({"middle_patch": [gligen.set_position(cases.UNET_X.shape, boxes, "cpu")]}))
    put("unet/gligen_empty", run({"middle_patch": [gligen.set_empty(cases.UNET_X.shape, "cpu")]}))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.pt"
        torch.save(cases.hypernetwork_object(unet_sd), path)
        patch = nodes_hypernetwork.load_hypernetwork_patch(str(path), cases.HYPERNETWORK_STRENGTH)
    put("unet/hypernetwork", run({"attn1_patch": [patch], "attn2_patch": [patch]}))


def unclip() -> None:
    for name, (dim, entries) in cases.UNCLIP_CASES.items():
        augmentor = CLIPEmbeddingNoiseAugmentation(
            noise_schedule_config={"timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}, timestep_dim=dim)
        conditioning = []
        for embeds, strength, noise in entries:
            output = comfy.clip_vision.Output()
            output["image_embeds"] = embeds
            conditioning.append({"clip_vision_output": output, "strength": strength, "noise_augmentation": noise})
        if dim == 1280:
            args = {"unclip_conditioning": conditioning, "device": "cpu", "seed": cases.UNCLIP_SEED}
            put(f"unclip/{name}", comfy.model_base.sdxl_pooled(args, augmentor))
        else:
            put(f"unclip/{name}", comfy.model_base.unclip_adm(conditioning, "cpu", augmentor, 0.05,
                                                             cases.UNCLIP_SEED - 10))


def lora() -> None:
    for name, diff in cases.LORA_DIFFS.items():
        up, down = nodes_lora_extract.extract_lora(diff, cases.LORA_RANK)
        put(f"lora/{name}/up", up)
        put(f"lora/{name}/down", down)


@torch.no_grad()
def union_controlnet() -> None:
    sd = cases.union_controlnet_state_dict()
    config = dict(comfy.model_detection.model_config_from_unet(sd, "", True).unet_config)
    config.pop("out_channels", None)
    config["hint_channels"] = sd["input_hint_block.0.weight"].shape[1]
    config["union_controlnet_num_control_type"] = sd["task_embedding"].shape[0]
    net = comfy.cldm.cldm.ControlNet(**config, device="cpu", operations=comfy.ops.disable_weight_init)
    renamed = {k.replace(".attn.in_proj_", ".attn.in_proj."): v for k, v in sd.items()}
    missing, unexpected = net.load_state_dict(renamed, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    net.eval()
    for name, types_ in cases.UNION_TYPES.items():
        out = net(cases.UNION_X, cases.UNION_HINT, cases.UNION_T, cases.UNION_CONTEXT, y=cases.UNION_Y,
                  control_type=types_)
        put(f"union/{name}/middle", out["middle"][0])
        for i, r in enumerate(out["output"]):
            put(f"union/{name}/output/{i}", r)


@torch.no_grad()
def image_conditioning() -> None:
    tiny_checkpoint_state_dict = sys.modules["tests.models_tiny"].tiny_checkpoint_state_dict
    vae_sd = {k[len("first_stage_model."):]: v for k, v in tiny_checkpoint_state_dict("sd15").items()
              if k.startswith("first_stage_model.")}
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    vae = comfy.sd.VAE(sd=vae_sd, config={"params": {"embed_dim": 4, "ddconfig": ddconfig}}, dtype=torch.float32)
    cond = [[torch.zeros(1, 77, 768), {}]]
    pos, neg, latent = v3(nodes_ip2p.InstructPixToPixConditioning, positive=cond, negative=cond,
                          pixels=cases.IP2P_PIXELS, vae=vae)
    put("ip2p/concat_latent_image", pos[0][1]["concat_latent_image"])
    put("ip2p/latent", latent["samples"])
    holder = types.SimpleNamespace(process_ip2p_image_in=lambda image: image)
    put("ip2p/concat_cond", comfy.model_base.IP2P.concat_cond(holder, noise=cases.IP2P_NOISE, device="cpu",
                                                              concat_latent_image=cases.IP2P_LATENT))
    put("ip2p/concat_cond_empty", comfy.model_base.IP2P.concat_cond(holder, noise=cases.IP2P_NOISE, device="cpu"))
    for name, (ratio, noise) in cases.UPSCALE_CASES.items():
        pos, _neg, latent = v3(nodes_sdupscale.SD_4XUpscale_Conditioning, images=cases.UPSCALE_IMAGES, positive=cond,
                              negative=cond, scale_ratio=ratio, noise_augmentation=noise)
        put(f"sd4x/{name}/concat_image", pos[0][1]["concat_image"])
        put(f"sd4x/{name}/latent", latent["samples"])


def main() -> None:
    for step in (clip_vision, style_model, unet_patches, unclip, lora, union_controlnet, image_conditioning):
        step()
        print("done", step.__name__, flush=True)
    save_file(OUT, str(HERE / "comfyui_reference.safetensors"),
              metadata={"cases": json.dumps(sorted(OUT)), "comfyui": "a125cd84"})
    print(f"wrote {len(OUT)} tensors")


if __name__ == "__main__":
    main()
