"""LoRA files: which of our weights each file key patches, and the low-rank update maths.

A LoRA stores, per patched module, `up` [out, r(, 1, 1)], `down` [r, in(, kh, kw)] and optionally
`alpha`; the module's weight becomes W + strength * (alpha / r) * (up @ down), computed in
float32 and reshaped to W's shape (so a linear-style pair can patch a 1x1 conv and the reverse,
and a kohya "LoCon" pair patches a 3x3 conv). Without alpha the scale is 1 (alpha = r).
LyCORIS' Tucker form adds `lora_mid` [r, r, kh, kw] between the two. Full differences
(`.diff` for a weight, `.diff_b` for its bias, as ComfyUI's trainer writes for norm scales and
biases) are added as they are: W' = W + strength * diff.

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
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch

log = logging.getLogger(__name__)

# (up suffix, down suffix, mid suffix or None), tried in this order for each module name.
PAIR_SUFFIXES = (
    (".lora_up.weight", ".lora_down.weight", ".lora_mid.weight"),
    ("_lora.up.weight", "_lora.down.weight", None),
    (".lora_B.weight", ".lora_A.weight", None),
    (".lora.up.weight", ".lora.down.weight", None),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight", None),
)
ALPHA_SUFFIX = ".alpha"
# Full differences (ComfyUI's trainer writes them for 1-D weights and for biases).
DIFF_SUFFIX, DIFF_BIAS_SUFFIX = ".diff", ".diff_b"
_ALL_SUFFIXES = tuple(s for triple in PAIR_SUFFIXES for s in triple if s) + (ALPHA_SUFFIX, DIFF_SUFFIX,
                                                                            DIFF_BIAS_SUFFIX)

# Text-encoder module names in kohya keys (HF CLIP names with '.' -> '_').
CLIP_LAYER_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                      "mlp.fc1", "mlp.fc2")
MAX_TEXT_LAYERS = 32
TEXT_KEY_PREFIXES = ("lora_te", "text_encoder", "lora_prior_te", "text_encoders.")


# ---------------------------------------------------------------------------------------------
# The maths


@dataclass(frozen=True, eq=False)
class LoraAdapter:
    """One module's low-rank update as stored in the file (any dtype, any device)."""

    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None = None
    mid: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    def product(self, device: torch.device | str | None = None) -> torch.Tensor:
        """up @ down (through mid when present) in float32, as [out, in * kernel]."""
        up = self.up.to(device=device, dtype=torch.float32)
        down = self.down.to(device=device, dtype=torch.float32)
        if self.mid is not None:
            down = self._through_mid(down, self.mid.to(device=device, dtype=torch.float32))
        return up.flatten(start_dim=1) @ down.flatten(start_dim=1)

    @staticmethod
    def _through_mid(down: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
        """Tucker LoCon: the 1x1 `down` [r, in] followed by the spatial `mid` [r, r, kh, kw] is the
        single kernel [r, in, kh, kw] sum_j mid[:, j] * down[j]."""
        return torch.einsum("ijhw,jc->ichw", mid, down.flatten(start_dim=1))

    def fits(self, shape: Iterable[int]) -> bool:
        shape = tuple(shape)
        if not shape or shape[0] != self.out_features:
            return False
        inner = self.down.shape[1:] if self.mid is None else (self.down.shape[1], *self.mid.shape[2:])
        return self.out_features * math.prod(inner) == math.prod(shape)

    def describe(self) -> str:
        mid = "" if self.mid is None else f" mid {list(self.mid.shape)}"
        return f"up {list(self.up.shape)} down {list(self.down.shape)}{mid}"

    def add_to(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        """weight += strength * scale * delta, in place; `weight` is the float32 working copy."""
        if not self.fits(weight.shape):
            raise ValueError(f"LoRA {self.describe()} does not fit a weight of shape {list(weight.shape)}")
        delta = self.product(weight.device).reshape(weight.shape)
        return weight.add_(delta, alpha=strength * self.scale)


@dataclass(frozen=True, eq=False)
class WeightDiff:
    """A full difference added to a weight or bias (`.diff` / `.diff_b` keys): W' = W + strength * diff."""

    diff: torch.Tensor

    def fits(self, shape: Iterable[int]) -> bool:
        return tuple(self.diff.shape) == tuple(shape)

    def describe(self) -> str:
        return f"diff {list(self.diff.shape)}"

    def add_to(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        if not self.fits(weight.shape):
            raise ValueError(f"LoRA {self.describe()} does not fit a weight of shape {list(weight.shape)}")
        return weight.add_(self.diff.to(device=weight.device, dtype=torch.float32), alpha=strength)


# ---------------------------------------------------------------------------------------------
# Our module names for each LoRA key form


@dataclass(frozen=True)
class Target:
    """A weight a LoRA module can patch: which component, its parameter name there, its shape."""

    component: str  # "model" (the UNet) or "clip" (the TextEncoder)
    key: str
    shape: tuple[int, ...]
    bias_shape: tuple[int, ...] | None = None  # the module's bias, when it has one

    @property
    def bias(self) -> "Target | None":
        if self.bias_shape is None:
            return None
        return Target(self.component, self.key[:-len("weight")] + "bias", self.bias_shape)


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
            target = Target("model", key, shape, shapes.get(module + ".bias"))
            out["lora_unet_" + module.replace(".", "_")] = target
            out["diffusion_model." + module] = target
    for d_key, key in diffusers_unet_key_map(unet.config, shapes).items():
        if not d_key.endswith(".weight"):
            continue
        module = d_key[:-len(".weight")]
        target = Target("model", key, shapes[key], shapes.get(key[:-len("weight")] + "bias"))
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
    comfy_names = {"l": "clip_l", "h": "clip_h", "g": "clip_g"}
    for tower in towers:
        base = f"towers.{tower}."
        inner = base + _module_path(encoder.towers[tower], encoder.towers[tower].text)
        for b in range(MAX_TEXT_LAYERS):
            for m in CLIP_LAYER_MODULES:
                key = f"{inner}encoder.layers.{b}.{m}.weight"
                if key not in shapes:
                    continue
                target = Target("clip", key, shapes[key], shapes.get(key[:-len("weight")] + "bias"))
                for pattern in _text_names(tower, towers):
                    flat = m.replace(".", "_") if pattern.startswith("lora_") else m
                    out[pattern.format(b=b, m=flat)] = target
                out[f"text_encoders.{comfy_names[tower]}.transformer.text_model.encoder.layers.{b}.{m}"] = target
        projection = f"{base}model.text_projection.weight"
        if tower == "g" and projection in shapes:
            for name in ("lora_te2_text_projection", "lora_prior_te_text_projection"):
                out[name] = Target("clip", projection, shapes[projection])
    return out


# ---------------------------------------------------------------------------------------------
# Reading a LoRA state dict against those names


@dataclass
class LoraMatch:
    """What a LoRA file patches: per component, target key -> adapter (file order), and what it
    could not apply."""

    patches: dict[str, dict[str, LoraAdapter]] = field(default_factory=lambda: {"model": {}, "clip": {}})
    unmatched: list[str] = field(default_factory=list)  # file keys that name no module we have
    misfit: list[str] = field(default_factory=list)  # modules whose shapes do not fit the weight
    total_keys: int = 0

    def count(self, component: str) -> int:
        return len(self.patches.get(component, {}))


def split_modules(lora: Mapping[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Group file keys by module name: {module: {suffix: tensor}}, plus keys of no known form."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    odd: list[str] = []
    for key, value in lora.items():
        suffix = next((s for s in _ALL_SUFFIXES if key.endswith(s) and len(key) > len(s)), None)
        if suffix is None:
            odd.append(key)
        else:
            modules.setdefault(key[:-len(suffix)], {})[suffix] = value
    return modules, odd


def _adapter(parts: dict[str, torch.Tensor]) -> tuple[LoraAdapter | None, list[str]]:
    """The adapter of one module's tensors and the suffixes it used (None: no up/down pair)."""
    alpha = parts.get(ALPHA_SUFFIX)
    alpha_value = None if alpha is None else float(alpha.float().reshape(-1)[0])
    for up, down, mid in PAIR_SUFFIXES:
        if up in parts and down in parts:
            used = [up, down] + ([ALPHA_SUFFIX] if alpha is not None else [])
            mid_tensor = parts.get(mid) if mid else None
            if mid_tensor is not None:
                used.append(mid)
            return LoraAdapter(parts[up], parts[down], alpha_value, mid_tensor), used
    return None, []


def match_lora(lora: Mapping[str, torch.Tensor], targets: Mapping[str, Target]) -> LoraMatch:
    """Pair each module of a LoRA state dict with the weight it patches."""
    result = LoraMatch(total_keys=len(lora))
    modules, odd = split_modules(lora)
    result.unmatched.extend(odd)
    for name, parts in modules.items():
        target = targets.get(name)
        adapter, used = _adapter(parts) if target is not None else (None, [])
        if adapter is None and target is not None and DIFF_SUFFIX in parts:
            adapter, used = WeightDiff(parts[DIFF_SUFFIX]), [DIFF_SUFFIX]
        if target is not None and target.bias is not None and DIFF_BIAS_SUFFIX in parts:
            used.append(DIFF_BIAS_SUFFIX)
            _add_patch(result, name, WeightDiff(parts[DIFF_BIAS_SUFFIX]), target.bias)
        result.unmatched.extend(name + s for s in parts if s not in used)
        if adapter is not None:
            _add_patch(result, name, adapter, target)
    return result


def _add_patch(result: LoraMatch, name: str, adapter, target: Target) -> None:
    if not adapter.fits(target.shape):
        result.misfit.append(f"{name} ({adapter.describe()} vs {target.key.rsplit('.', 1)[-1]} {list(target.shape)})")
    else:
        result.patches[target.component][target.key] = adapter


def is_text_key(key: str) -> bool:
    return key.startswith(TEXT_KEY_PREFIXES)


# ---------------------------------------------------------------------------------------------
# Putting a LoRA on MODEL / CLIP handles (ComfyUI's load_lora_for_models)


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


def apply_lora(lora: Mapping[str, torch.Tensor], model, clip, strength_model: float, strength_clip: float,
               name: str = "LoRA"):
    """(MODEL clone, CLIP clone, LoraReport): the handles given, each carrying this LoRA's patches
    after any it already had. `model` / `clip` may be None (that output is then None)."""
    from diffusion.handles import with_weight_patches
    from diffusion.patches import WeightPatch

    targets: dict[str, Target] = {}
    if model is not None:
        targets.update(unet_key_map(model.unet))
    if clip is not None:
        targets.update(text_key_map(clip.encoder))
    found = match_lora(lora, targets)
    unmatched, text_skipped = found.unmatched, 0
    if clip is None:
        text_skipped = sum(1 for k in unmatched if is_text_key(k))
        unmatched = [k for k in unmatched if not is_text_key(k)]

    def patches(component: str, strength: float) -> list:
        return [WeightPatch(key, adapter, strength) for key, adapter in found.patches[component].items()]

    new_model = None if model is None else with_weight_patches(model, patches("model", strength_model))
    new_clip = None if clip is None else clip.with_patches(patches("clip", strength_clip))
    report = LoraReport(name, found.count("model"), found.count("clip"), tuple(unmatched), tuple(found.misfit),
                        text_skipped)
    if unmatched:
        log.warning("LoRA %s: %d key(s) matched no module and were not applied: %s", name, len(unmatched),
                    ", ".join(unmatched))
    if found.misfit:
        log.warning("LoRA %s: shapes do not fit, not applied: %s", name, "; ".join(found.misfit))
    if text_skipped:
        log.info("LoRA %s: %d text-encoder key(s) not applied (no CLIP given)", name, text_skipped)
    return new_model, new_clip, report
