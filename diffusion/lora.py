"""LoRA files: which of our weights each file key patches, read into weight patches.

`load_lora_for_models(model, clip, lora_sd, strength_model, strength_clip)` is ComfyUI's: clones
of the MODEL and CLIP carrying the file's patches (diffusion.patches holds the formats and the
maths: LoRA / LoCon / Tucker, LoHa, LoKr, GLoRA, OFT, DoRA scales, diff and set keys). A module's
LoRA weight becomes W + strength * (alpha / r) * (up @ down), reshaped to W's shape, so a
linear-style pair can patch a 1x1 conv and the reverse; without alpha the scale is 1.

File layouts understood (as ComfyUI's comfy/lora.py, see `unet_key_map` / `text_key_map`):
* kohya: `lora_unet_<diffusers or LDM module path, '.' -> '_'>`, `lora_te_*` (SD1/SD2 text
  encoder, also SDXL's CLIP-L), `lora_te1_*` / `lora_te2_*` (SDXL CLIP-L / bigG), with
  `.lora_up.weight` / `.lora_down.weight` / `.alpha`;
* diffusers / PEFT: `unet.<diffusers path>`, `text_encoder.*`, `text_encoder_2.*` with
  `.lora_B.weight` / `.lora_A.weight`, `.lora.up/down.weight`, `.lora_linear_layer.up/down.weight`,
  or the attention-processor form `...attn1.processor.to_q_lora.up.weight`;
* LDM-named: `diffusion_model.<our path>`, `lycoris_<diffusers path with _>`.

Our UNet keeps the original LDM module names, so diffusers names go through
`diffusers_unet_key_map`, the block-by-block correspondence of the two layouts.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

from .patches import GLoRAAdapter, LoHaAdapter, LoKrAdapter, LoRAAdapter, OFTAdapter, patch_fits

log = logging.getLogger(__name__)

# Text-encoder module names in kohya keys (HF CLIP names with '.' -> '_').
CLIP_LAYER_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                      "mlp.fc1", "mlp.fc2")
MAX_TEXT_LAYERS = 32
TEXT_KEY_PREFIXES = ("lora_te", "text_encoder", "lora_prior_te", "text_encoders.")


# ---------------------------------------------------------------------------------------------
# Our module names for each LoRA key form


@dataclass(frozen=True)
class Target:
    """A weight a LoRA module can patch: which component, its parameter name there, its shape."""

    component: str  # "model" (the UNet) or "clip" (the TextEncoder)
    key: str
    shape: tuple[int, ...]


_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
           "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_SPATIAL = ("norm", "proj_in", "proj_out")
_BLOCK = ("norm1", "norm2", "norm3", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
          "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
_BASIC = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
          "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
          "add_embedding.linear_2": "label_emb.0.2", "class_embedding.linear_1": "label_emb.0.0",
          "class_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _transformer_modules(diffusers: str, ldm: str, depth: int) -> dict[str, str]:
    out = {f"{diffusers}.{m}": f"{ldm}.{m}" for m in _SPATIAL}
    for t in range(depth):
        out.update({f"{diffusers}.transformer_blocks.{t}.{m}": f"{ldm}.transformer_blocks.{t}.{m}" for m in _BLOCK})
    return out


def _resnet_modules(diffusers: str, ldm: str) -> dict[str, str]:
    return {f"{diffusers}.{d}": f"{ldm}.{o}" for o, d in _RESNET.items()}


def diffusers_unet_modules(config) -> dict[str, str]:
    """diffusers UNet2DConditionModel module path -> our (LDM) module path, for a UNetConfig.

    Encoder level x, ResBlock i sits at input_blocks[1 + (nrb + 1) * x + i] (slot 0, transformer
    in slot 1), its downsampler after the level's ResBlocks; decoder level x (deepest first) has
    nrb + 1 blocks, the upsampler last in the level's last block, after its transformer if any.
    Modules a given model lacks (shortcuts where widths agree, ...) are left to the caller to drop.
    """
    levels = len(config.channel_mult)
    depth_in, depth_out = list(config.transformer_depth), list(config.transformer_depth_output)
    out = dict(_BASIC)
    n = 1
    for x in range(levels):
        for i in range(config.num_res_blocks[x]):
            out.update(_resnet_modules(f"down_blocks.{x}.resnets.{i}", f"input_blocks.{n}.0"))
            depth = depth_in.pop(0)
            if depth:
                out.update(_transformer_modules(f"down_blocks.{x}.attentions.{i}", f"input_blocks.{n}.1", depth))
            n += 1
        if x != levels - 1:
            out[f"down_blocks.{x}.downsamplers.0.conv"] = f"input_blocks.{n}.0.op"
            n += 1
    out.update(_resnet_modules("mid_block.resnets.0", "middle_block.0"))
    out.update(_transformer_modules("mid_block.attentions.0", "middle_block.1", config.transformer_depth_middle))
    out.update(_resnet_modules("mid_block.resnets.1", "middle_block.2"))
    n = 0
    for x, level in enumerate(reversed(range(levels))):
        blocks = config.num_res_blocks[level] + 1
        for i in range(blocks):
            out.update(_resnet_modules(f"up_blocks.{x}.resnets.{i}", f"output_blocks.{n}.0"))
            slot = 1
            depth = depth_out.pop(0)
            if depth:
                out.update(_transformer_modules(f"up_blocks.{x}.attentions.{i}", f"output_blocks.{n}.1", depth))
                slot = 2
            if level and i == blocks - 1:
                out[f"up_blocks.{x}.upsamplers.0.conv"] = f"output_blocks.{n}.{slot}.conv"
            n += 1
    return out


def diffusers_unet_key_map(config, our_keys: Iterable[str]) -> dict[str, str]:
    """diffusers parameter name -> our parameter name, for the parameters `our_keys` holds."""
    present = set(our_keys)
    out = {}
    for d, o in diffusers_unet_modules(config).items():
        for param in ("weight", "bias"):
            if f"{o}.{param}" in present:
                out[f"{d}.{param}"] = f"{o}.{param}"
    return out


def _processor_name(diffusers_module: str) -> str:
    """Old diffusers attention-processor LoRAs: `attn1.processor.to_q`, `to_out` without `.0`."""
    name = diffusers_module.replace(".to_", ".processor.to_")
    return name[:-2] if name.endswith(".to_out.0") else name


def unet_key_map(unet: torch.nn.Module) -> dict[str, Target]:
    """LoRA module name -> the UNet weight it patches, for every name form ComfyUI accepts plus
    PEFT's plain diffusers module paths. Works on a meta-device model."""
    shapes = {k: tuple(p.shape) for k, p in unet.named_parameters()}
    out: dict[str, Target] = {}
    for key, shape in shapes.items():
        if key.endswith(".weight"):
            module = key[:-len(".weight")]
            target = Target("model", key, shape)
            out["lora_unet_" + module.replace(".", "_")] = target
            out["diffusion_model." + module] = target
    for d_key, key in diffusers_unet_key_map(unet.config, shapes).items():
        if not d_key.endswith(".weight"):
            continue
        module = d_key[:-len(".weight")]
        target = Target("model", key, shapes[key])
        flat = module.replace(".", "_")
        out["lora_unet_" + flat] = target
        out["lycoris_" + flat] = target
        for prefix in ("", "unet."):
            out[prefix + module] = target
            out[prefix + _processor_name(module)] = target
    return out


def _text_names(tower: str, towers: set[str]) -> list[str]:
    """The name prefixes under which a tower's layers appear in LoRA files (ComfyUI's rules:
    CLIP-L and ViT-H answer to lora_te_ and lora_te1_; bigG to lora_te2_ beside a CLIP-L, else
    it is the only encoder and answers to lora_te_)."""
    kohya = {"l": ["lora_te_", "lora_te1_"], "h": ["lora_te_", "lora_te1_"],
             "g": ["lora_te2_"] if "l" in towers else ["lora_te_", "lora_prior_te_"]}[tower]
    diffusers = "text_encoder_2." if tower == "g" and "l" in towers else "text_encoder."
    return [k + "text_model_encoder_layers_{b}_{m}" for k in kohya] + [diffusers + "text_model.encoder.layers.{b}.{m}"]


def _module_path(root: torch.nn.Module, module: torch.nn.Module) -> str:
    """`module`'s attribute path inside `root` with a trailing dot ("" for root itself); transformers
    versions differ in whether CLIP's text transformer sits under `.text_model`."""
    for name, m in root.named_modules():
        if m is module:
            return name + "." if name else ""
    raise ValueError(f"{type(module).__name__} is not inside {type(root).__name__}")


def text_key_map(encoder: torch.nn.Module) -> dict[str, Target]:
    """LoRA module name -> the text-encoder weight it patches (`encoder` is a TextEncoder).
    Works on a meta-device model."""
    shapes = {k: tuple(p.shape) for k, p in encoder.named_parameters()}
    towers = set(encoder.towers.keys())
    out: dict[str, Target] = {}
    for tower in towers:
        base = f"clip_{tower}."
        inner = base + _module_path(encoder.towers[tower], encoder.towers[tower].text)
        for b in range(MAX_TEXT_LAYERS):
            for m in CLIP_LAYER_MODULES:
                key = f"{inner}encoder.layers.{b}.{m}.weight"
                if key not in shapes:
                    continue
                target = Target("clip", key, shapes[key])
                for pattern in _text_names(tower, towers):
                    flat = m.replace(".", "_") if pattern.startswith("lora_") else m
                    out[pattern.format(b=b, m=flat)] = target
        # ComfyUI's own names (LoraSave's "text_encoders." keys): every weight by its state-dict key
        for key, shape in shapes.items():
            if key.startswith(base) and key.endswith(".weight"):
                out["text_encoders." + key[:-len(".weight")]] = Target("clip", key, shape)
        projection = f"{base}transformer.text_projection.weight"
        if tower == "g" and projection in shapes:
            for name in ("lora_te2_text_projection", "lora_prior_te_text_projection"):
                out[name] = Target("clip", projection, shapes[projection])
    return out


# ---------------------------------------------------------------------------------------------
# ComfyUI's key maps: LoRA module name -> state-dict key of the patched weight


def model_lora_keys_unet(model, key_map: dict | None = None) -> dict[str, str]:
    """LoRA module names of a DiffusionModel's UNet -> "diffusion_model.<param>" keys."""
    key_map = {} if key_map is None else key_map
    for name, target in unet_key_map(model.diffusion_model).items():
        key_map[name] = "diffusion_model." + target.key
    return key_map


def model_lora_keys_clip(model, key_map: dict | None = None) -> dict[str, str]:
    """LoRA module names of a text encoder (CLIP's cond_stage_model) -> its state-dict keys."""
    key_map = {} if key_map is None else key_map
    for name, target in text_key_map(model).items():
        key_map[name] = target.key
    return key_map


# ---------------------------------------------------------------------------------------------
# Reading a LoRA state dict into patches

# (up, down, mid) key suffixes of the LoRA pair forms, tried in this order (ComfyUI's).
PAIR_FORMS = (
    (".lora_up.weight", ".lora_down.weight", ".lora_mid.weight"),
    ("_lora.up.weight", "_lora.down.weight", None),
    (".lora_B.weight", ".lora_A.weight", None),
    (".lora.up.weight", ".lora.down.weight", None),
    (".lora_B", ".lora_A", None),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight", None),
    (".lora_B.default.weight", ".lora_A.default.weight", None),
)
LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_KEYS = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def _adapter(x: str, lora: Mapping[str, torch.Tensor], alpha, dora_scale, used: set):
    """The adapter stored under module name `x`, or None."""
    for up, down, mid in PAIR_FORMS:
        if x + up in lora and x + down in lora:
            mid_t = lora.get(x + mid) if mid else None
            reshape = None
            if x + ".reshape_weight" in lora:
                reshape = lora[x + ".reshape_weight"].tolist()
                used.add(x + ".reshape_weight")
            used.update({x + up, x + down} | ({x + mid} if mid_t is not None else set()))
            return LoRAAdapter(used, (lora[x + up], lora[x + down], alpha, mid_t, dora_scale, reshape))
    if f"{x}.hada_w1_a" in lora:
        t1, t2 = lora.get(f"{x}.hada_t1"), lora.get(f"{x}.hada_t2")
        used.update(f"{x}.{k}" for k in LOHA_KEYS)
        if t1 is not None:
            used.update({f"{x}.hada_t1", f"{x}.hada_t2"})
        return LoHaAdapter(used, (lora[f"{x}.hada_w1_a"], lora[f"{x}.hada_w1_b"], alpha, lora[f"{x}.hada_w2_a"],
                                  lora[f"{x}.hada_w2_b"], t1, t2, dora_scale))
    parts = {k: lora.get(f"{x}.{k}") for k in LOKR_KEYS}
    if any(parts[k] is not None for k in ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w2_a")):
        used.update(f"{x}.{k}" for k, v in parts.items() if v is not None)
        return LoKrAdapter(used, (parts["lokr_w1"], parts["lokr_w2"], alpha, parts["lokr_w1_a"], parts["lokr_w1_b"],
                                  parts["lokr_w2_a"], parts["lokr_w2_b"], parts["lokr_t2"], dora_scale))
    if f"{x}.a1.weight" in lora:
        names = [f"{x}.{n}.weight" for n in ("a1", "a2", "b1", "b2")]
        used.update(names)
        return GLoRAAdapter(used, (*(lora[n] for n in names), alpha, dora_scale))
    blocks = lora.get(f"{x}.oft_blocks")
    if blocks is not None and blocks.ndim == 3:   # 4-D blocks are BOFT's, not read
        rescale = lora.get(f"{x}.rescale")
        used.update({f"{x}.oft_blocks"} | ({f"{x}.rescale"} if rescale is not None else set()))
        return OFTAdapter(used, (blocks, rescale, alpha, dora_scale))
    return None


def load_lora(lora: Mapping[str, torch.Tensor], to_load: Mapping[str, str], log_missing: bool = True) -> dict:
    """ComfyUI's comfy.lora.load_lora: {model key: patch} for every module of `to_load` (LoRA module
    name -> model key) found in the file; file keys left over are logged."""
    return read_lora(lora, to_load, log_missing)[0]


def read_lora(lora: Mapping[str, torch.Tensor], to_load: Mapping[str, str], log_missing: bool = False
              ) -> tuple[dict, list[str]]:
    """(patches as load_lora gives them, the file keys nothing used)."""
    patch_dict: dict = {}
    loaded: set[str] = set()
    for x, key in to_load.items():
        alpha = None
        if x + ".alpha" in lora:
            alpha = float(lora[x + ".alpha"].float().reshape(-1)[0])
            loaded.add(x + ".alpha")
        dora_scale = lora.get(x + ".dora_scale")
        if dora_scale is not None:
            loaded.add(x + ".dora_scale")
        adapter = _adapter(x, lora, alpha, dora_scale, set())
        if adapter is not None:
            patch_dict[key] = adapter
            loaded.update(adapter.loaded_keys)
        base = key[:-len(".weight")] if key.endswith(".weight") else key
        w_norm, b_norm = lora.get(x + ".w_norm"), lora.get(x + ".b_norm")
        if w_norm is not None:
            loaded.add(x + ".w_norm")
            patch_dict[key] = ("diff", (w_norm,))
            if b_norm is not None:
                loaded.add(x + ".b_norm")
                patch_dict[base + ".bias"] = ("diff", (b_norm,))
        if x + ".diff" in lora:
            patch_dict[key] = ("diff", (lora[x + ".diff"],))
            loaded.add(x + ".diff")
        if x + ".diff_b" in lora:
            patch_dict[base + ".bias"] = ("diff", (lora[x + ".diff_b"],))
            loaded.add(x + ".diff_b")
        if x + ".set_weight" in lora:
            patch_dict[key] = ("set", (lora[x + ".set_weight"],))
            loaded.add(x + ".set_weight")
    unloaded = [k for k in lora if k not in loaded]
    if log_missing:
        for k in unloaded:
            log.warning("lora key not loaded: %s", k)
    return patch_dict, unloaded


def is_text_key(key: str) -> bool:
    return key.startswith(TEXT_KEY_PREFIXES)


# ---------------------------------------------------------------------------------------------
# Putting a LoRA on MODEL / CLIP (ComfyUI's comfy.sd.load_lora_for_models)


@dataclass(frozen=True)
class LoraReport:
    name: str
    model_modules: int
    clip_modules: int
    unmatched: tuple[str, ...] = ()
    misfit: tuple[str, ...] = ()
    text_skipped: int = 0  # text-encoder keys when there is no CLIP to patch (model-only)

    @property
    def problems(self) -> int:
        return len(self.unmatched) + len(self.misfit)

    def message(self) -> str:
        parts = [f"LoRA {self.name}: patched {self.model_modules} model and {self.clip_modules} CLIP module(s)"]
        if self.unmatched:
            shown = ", ".join(self.unmatched[:5]) + (" ..." if len(self.unmatched) > 5 else "")
            parts.append(f"{len(self.unmatched)} key(s) matched no module and were not applied ({shown})")
        if self.misfit:
            parts.append(f"{len(self.misfit)} module(s) have shapes that do not fit and were not applied "
                         f"({self.misfit[0]}{' ...' if len(self.misfit) > 1 else ''})")
        if self.text_skipped:
            parts.append(f"{self.text_skipped} text-encoder key(s) not applied (no CLIP given)")
        return "; ".join(parts)


def _fitting(patches: dict, shapes: Mapping[str, tuple]) -> tuple[dict, list[str]]:
    """The patches whose deltas fit their weights, and a description of those that do not."""
    ok, misfit = {}, []
    for key, value in patches.items():
        if patch_fits(value, shapes[key]):
            ok[key] = value
        else:
            source = min(getattr(value, "loaded_keys", ()) or [key])
            misfit.append(f"{source} ({value!r} vs weight {key} {list(shapes[key])})")
    return ok, misfit


def lora_patches(lora: Mapping[str, torch.Tensor], model, clip) -> tuple[dict, dict, list[str], list[str]]:
    """(MODEL patches, CLIP patches, unmatched file keys, misfits) of a LoRA state dict."""
    key_map: dict[str, str] = {}
    if model is not None:
        model_lora_keys_unet(model.model, key_map)
    if clip is not None:
        model_lora_keys_clip(clip.cond_stage_model, key_map)
    loaded, unmatched = read_lora(lora, key_map)
    model_shapes = {k: tuple(v.shape) for k, v in model.model.state_dict().items()} if model is not None else {}
    clip_shapes = {k: tuple(v.shape) for k, v in clip.cond_stage_model.state_dict().items()} if clip is not None else {}
    model_patches, misfit = _fitting({k: v for k, v in loaded.items() if k in model_shapes}, model_shapes)
    clip_patches, clip_misfit = _fitting({k: v for k, v in loaded.items() if k in clip_shapes}, clip_shapes)
    return model_patches, clip_patches, unmatched, misfit + clip_misfit


def load_lora_for_models(model, clip, lora: Mapping[str, torch.Tensor], strength_model: float,
                         strength_clip: float, name: str = "LoRA"):
    """(MODEL clone, CLIP clone, LoraReport): the inputs carrying this LoRA's patches after any they
    already had. `model` / `clip` may be None (that output is then None)."""
    model_patches, clip_patches, unmatched, misfit = lora_patches(lora, model, clip)
    new_model = new_clip = None
    if model is not None:
        new_model = model.clone()
        new_model.add_patches(model_patches, strength_model)
    if clip is not None:
        new_clip = clip.clone()
        new_clip.add_patches(clip_patches, strength_clip)
    text_skipped = 0
    if clip is None:
        text_skipped = sum(1 for k in unmatched if is_text_key(k))
        unmatched = [k for k in unmatched if not is_text_key(k)]
    report = LoraReport(name, len(model_patches), len(clip_patches), tuple(unmatched), tuple(misfit), text_skipped)
    if unmatched:
        log.warning("LoRA %s: %d key(s) matched no module and were not applied: %s", name, len(unmatched),
                    ", ".join(unmatched))
    if misfit:
        log.warning("LoRA %s: shapes do not fit, not applied: %s", name, "; ".join(misfit))
    if text_skipped:
        log.info("LoRA %s: %d text-encoder key(s) not applied (no CLIP given)", name, text_skipped)
    return new_model, new_clip, report
