"""What MODEL, CLIP and VAE values are between nodes, and how a checkpoint file becomes them.

* MODEL is a `ModelPatcher` over a `DiffusionModel` (see diffusion.model_patcher).
* CLIP is `CLIP`: a text encoder (`cond_stage_model`, ComfyUI's SD1ClipModel / SDXLClipModel
  shape), its `tokenizer` and a `patcher` holding the encoder's weight patches (LoRA).
* VAE is `VAE`: the autoencoder (`first_stage_model`) with ComfyUI's encode / decode calling
  convention (IMAGE [B, H, W, C] in 0..1 <-> unscaled latents).
The classes carry ComfyUI's names and signatures (comfy.sd.CLIP, comfy.sd.VAE) because plugins
call them. Every network built here is registered with the model-lifetime service
(diffusion.model_management) along with a way to rebuild it from its file, and each call asks
the service to load it first.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from diffusion import tiling
from diffusion.checkpoint import (
    load_checkpoint,
    load_text_encoder,
    load_unet,
    load_vae,
    split_components,
    stored_state_dict,
)
from diffusion.device import release_freed_memory
from diffusion.hooks import EnumHookMode
from diffusion.latent_formats import latent_format_for
from diffusion.model import model_class_for
from diffusion.model_management import ModelManagement, use_models
from diffusion.model_patcher import ModelPatcher
from diffusion.model_sampling import model_sampling_for
from diffusion.prompt_weights import EmbeddingDirectory
from diffusion.vae import AutoencoderKL

log = logging.getLogger(__name__)

VAE_SCALE = 8  # pixels per latent cell


def _dtype_size(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


# ---------------------------------------------------------------------------------------------
# CLIP


class CLIP:
    """A text encoder with its tokenizer and weight patches (ComfyUI's comfy.sd.CLIP)."""

    def __init__(self, cond_stage_model=None, tokenizer=None, load_device=None, offload_device=None,
                 manager: ModelManagement | None = None, no_init: bool = False):
        if no_init:
            return
        device = torch.device("cpu")
        self.cond_stage_model = cond_stage_model
        self.tokenizer = tokenizer if tokenizer is not None else cond_stage_model.make_tokenizer()
        self.patcher = ModelPatcher(cond_stage_model, load_device=load_device or device,
                                    offload_device=offload_device or device)
        self.patcher.is_clip = True
        self.patcher.hook_mode = EnumHookMode.MinVram
        self.patcher.manager = manager
        self.layer_idx = None
        self.use_clip_schedule = False
        self.apply_hooks_to_conds = None
        self.tokenizer_options: dict = {}

    def clone(self) -> "CLIP":
        n = CLIP(no_init=True)
        n.patcher = self.patcher.clone()
        n.cond_stage_model = self.cond_stage_model
        n.tokenizer = self.tokenizer
        n.layer_idx = self.layer_idx
        n.tokenizer_options = dict(self.tokenizer_options)
        n.use_clip_schedule = self.use_clip_schedule
        n.apply_hooks_to_conds = self.apply_hooks_to_conds
        return n

    def add_patches(self, patches, strength_patch: float = 1.0, strength_model: float = 1.0):
        return self.patcher.add_patches(patches, strength_patch, strength_model)

    def set_tokenizer_option(self, option_name: str, value) -> None:
        self.tokenizer_options[option_name] = value

    def clip_layer(self, layer_idx) -> None:
        """CLIPSetLastLayer: read the output of this (negative) layer index."""
        self.layer_idx = layer_idx

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs) -> dict:
        """{encoder name ("l", "h", "g"): 77-token windows of (token, weight[, word id])}."""
        options = {**self.tokenizer_options, **kwargs.get("tokenizer_options", {})}
        if options:
            kwargs["tokenizer_options"] = options
        return self.tokenizer.tokenize_with_weights(text, return_word_ids, **kwargs)

    def add_hooks_to_dict(self, pooled_dict: dict) -> dict:
        if self.apply_hooks_to_conds:
            pooled_dict["hooks"] = self.apply_hooks_to_conds
        return pooled_dict

    def load_model(self) -> ModelPatcher:
        use_models([self.patcher])
        return self.patcher

    def encode_from_tokens(self, tokens: dict, return_pooled=False, return_dict: bool = False):
        """cond [1, 77 * windows, D]; with return_pooled (cond, pooled); with return_dict
        {"cond", "pooled_output"}. return_pooled="unprojected" skips the text projection."""
        model = self.cond_stage_model
        model.reset_clip_options()
        if self.layer_idx is not None:
            model.set_clip_options({"layer": self.layer_idx})
        if return_pooled == "unprojected":
            model.set_clip_options({"projected_pooled": False})
        self.load_model()
        with torch.no_grad():
            cond, pooled = model.encode_token_weights(tokens)[:2]
        if return_dict:
            return self.add_hooks_to_dict({"cond": cond, "pooled_output": pooled})
        return (cond, pooled) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens: dict, unprojected: bool = False, add_dict: dict | None = None,
                                     show_pbar: bool = True) -> list:
        """CONDITIONING for tokens: [[cond, {"pooled_output": pooled, **add_dict}]]. With SetClipHooks'
        schedule_clip, one entry per range of sampling over which the hooks' strengths are
        constant, each encoded with those strengths and marked clip_start/end_percent."""
        add_dict = add_dict or {}
        hooks = self.patcher.forced_hooks
        if hooks is None or not self.use_clip_schedule:
            out = self.encode_from_tokens(tokens, return_pooled="unprojected" if unprojected else True,
                                          return_dict=True)
            cond = out.pop("cond")
            out.update(add_dict)
            return [[cond, out]]
        model = self.cond_stage_model
        model.reset_clip_options()
        if self.layer_idx is not None:
            model.set_clip_options({"layer": self.layer_idx})
        if unprojected:
            model.set_clip_options({"projected_pooled": False})
        self.load_model()
        hooks.reset()
        self.patcher.patch_hooks(None)
        entries = []
        try:
            for (start, end), in_force in hooks.get_hooks_for_clip_schedule():
                if end < add_dict.get("start_percent", -1.0) or start > add_dict.get("end_percent", 2.0):
                    continue  # outside the sampling range this conditioning is for
                for hook, keyframe in in_force:
                    hook.hook_keyframe._current_keyframe = keyframe
                self.patcher.patch_hooks(hooks)
                with torch.no_grad():
                    cond, pooled = model.encode_token_weights(tokens)[:2]
                extras = {"pooled_output": pooled, "clip_start_percent": start, "clip_end_percent": end, **add_dict}
                entries.append([cond, self.add_hooks_to_dict(extras)])
        finally:
            hooks.reset()
        return entries

    def encode(self, text: str) -> torch.Tensor:
        return self.encode_from_tokens(self.tokenize(text))

    def load_sd(self, sd: dict, full_model: bool = False):
        if full_model:
            return self.cond_stage_model.load_state_dict(sd, strict=False)
        return self.cond_stage_model.load_sd(sd)

    def get_sd(self) -> dict:
        sd = self.cond_stage_model.state_dict()
        sd.update(self.tokenizer.state_dict())
        return sd

    def get_key_patches(self) -> dict:
        return self.patcher.get_key_patches()


# ---------------------------------------------------------------------------------------------
# VAE


def crop_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Centre-crop [B, H, W, C] so H and W are multiples of `multiple`, as ComfyUI's VAE does."""
    h, w = image.shape[1:3]
    new_h, new_w = h // multiple * multiple, w // multiple * multiple
    if new_h == 0 or new_w == 0:
        raise ValueError(f"image of {w}x{h} pixels is too small to encode: both sides must be at least {multiple}")
    top, left = (h % multiple) // 2, (w % multiple) // 2
    return image[:, top:top + new_h, left:left + new_w, :]


class VAE:
    """The autoencoder with ComfyUI's comfy.sd.VAE calling convention. Encodes and decodes whole
    images (the result never depends on how much memory is free); only a failed allocation falls
    back to tiles."""

    def __init__(self, first_stage_model: AutoencoderKL, device=None, dtype: torch.dtype = torch.float32,
                 offload_device=None, manager: ModelManagement | None = None):
        cpu = torch.device("cpu")
        self.first_stage_model = first_stage_model.eval()
        config = first_stage_model.config
        self.device = torch.device(device) if device is not None else cpu
        self.offload_device = torch.device(offload_device) if offload_device is not None else cpu
        self.vae_dtype = dtype
        self.output_device = cpu
        self.downscale_ratio = self.upscale_ratio = config.downscale
        self.latent_channels = config.embed_dim
        self.latent_dim = 2
        self.output_channels = config.out_channels
        self.working_dtypes = [torch.bfloat16, torch.float32]
        self.disable_offload = False
        self.not_video = False
        self.crop_input = True
        self.downscale_index_formula = self.upscale_index_formula = self.extra_1d_channel = None
        # ComfyUI's working-memory estimates for a KL autoencoder (bytes for a batch of this shape).
        self.memory_used_encode = lambda shape, dtype: 1767 * shape[2] * shape[3] * _dtype_size(dtype)
        self.memory_used_decode = lambda shape, dtype: 2178 * shape[2] * shape[3] * 64 * _dtype_size(dtype)
        if self._nhwc():
            first_stage_model.to_channels_last()   # once, here, rather than per call
        self.patcher = ModelPatcher(self.first_stage_model, load_device=self.device, offload_device=self.offload_device)
        self.patcher.manager = manager

    def _nhwc(self) -> bool:
        """NHWC weights for a VAE computing on the CPU in a reduced precision. In fp32 the layout
        stays NCHW: NHWC kernels sum in another order, and fp32 must give ComfyUI's pixels bit for
        bit (tiled decodes included)."""
        return (self.device.type == "cpu" and self.vae_dtype != torch.float32
                and hasattr(self.first_stage_model, "to_channels_last"))

    @staticmethod
    def process_input(image: torch.Tensor) -> torch.Tensor:
        return image * 2.0 - 1.0

    @staticmethod
    def process_output(image: torch.Tensor) -> torch.Tensor:
        return torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)

    def throw_exception_if_invalid(self) -> None:
        if self.first_stage_model is None:
            raise RuntimeError("this VAE is invalid: the file held no usable VAE weights")

    def spacial_compression_decode(self) -> int:
        return self.upscale_ratio

    def spacial_compression_encode(self) -> int:
        return self.downscale_ratio

    def temporal_compression_decode(self):
        return None

    def vae_encode_crop_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return crop_to_multiple(pixels, self.downscale_ratio)

    def _load(self, memory_required: int) -> None:
        use_models([self.patcher], memory_required=memory_required, force_full_load=self.disable_offload)

    def decode(self, samples_in: torch.Tensor, vae_options: dict | None = None) -> torch.Tensor:
        """Latent [B, C, h, w] -> IMAGE [B, h*f, w*f, 3] in 0..1 on the CPU."""
        self.throw_exception_if_invalid()
        self._load(self.memory_used_decode(samples_in.shape, self.vae_dtype))
        try:
            with torch.no_grad():
                raw = self.first_stage_model.decode(samples_in.to(self.device, self.vae_dtype))
                pixels = self.process_output(raw.to(self.output_device).float())
            del raw
            self._empty_cache()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            pixels = None
        if pixels is None:
            log.warning("out of memory decoding whole images, decoding in tiles")
            self._empty_cache()
            return self.decode_tiled(samples_in)
        return pixels.movedim(1, -1)

    def encode(self, pixel_samples: torch.Tensor) -> torch.Tensor:
        """IMAGE [B, H, W, C] in 0..1 -> latent [B, C, H/f, W/f] (unscaled, float32, on the CPU)."""
        self.throw_exception_if_invalid()
        pixels = self.vae_encode_crop_pixels(pixel_samples[..., :3]).movedim(-1, 1)
        self._load(self.memory_used_encode(pixels.shape, self.vae_dtype))
        try:
            with torch.no_grad():
                latent = self.first_stage_model.encode(self.process_input(pixels).to(self.device, self.vae_dtype))
                latent = latent.to(self.output_device).float()
            self._empty_cache()
            return latent
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        log.warning("out of memory encoding whole images, encoding in tiles")
        self._empty_cache()
        return self.encode_tiled(pixel_samples)

    def _empty_cache(self) -> None:
        release_freed_memory(self.device)

    def decode_tiled(self, samples: torch.Tensor, tile_x: int | None = None, tile_y: int | None = None,
                     overlap: int | None = None, tile_t: int | None = None, overlap_t: int | None = None,
                     progress: tiling.Progress | None = None) -> torch.Tensor:
        """ComfyUI's VAE.decode_tiled: latent -> IMAGE [B, H, W, 3]; tiles and overlap in latent
        cells (64 and 16 when not given). tile_t/overlap_t only matter to video VAEs."""
        self.throw_exception_if_invalid()
        self._load(self.memory_used_decode(samples.shape, self.vae_dtype))

        def decode(part: torch.Tensor) -> torch.Tensor:
            return self.first_stage_model.decode(part.to(self.device, self.vae_dtype)).float()

        with torch.no_grad():
            pixels = tiling.decode_tiled(decode, samples, self.upscale_ratio, self.output_channels, tile_x, tile_y,
                                         overlap, progress)
        return self.process_output(pixels.to(self.output_device)).movedim(1, -1)

    def encode_tiled(self, pixel_samples: torch.Tensor, tile_x: int | None = None, tile_y: int | None = None,
                     overlap: int | None = None, tile_t: int | None = None, overlap_t: int | None = None,
                     progress: tiling.Progress | None = None) -> torch.Tensor:
        """ComfyUI's VAE.encode_tiled: IMAGE -> latent; tiles and overlap in pixels (512 and 64
        when not given). tile_t/overlap_t only matter to video VAEs."""
        self.throw_exception_if_invalid()
        pixels = self.vae_encode_crop_pixels(pixel_samples[..., :3]).movedim(-1, 1)
        self._load(self.memory_used_encode(pixels.shape, self.vae_dtype))

        def encode(part: torch.Tensor) -> torch.Tensor:
            return self.first_stage_model.encode(self.process_input(part).to(self.device, self.vae_dtype)).float()

        with torch.no_grad():
            return tiling.encode_tiled(encode, pixels.float(), self.downscale_ratio, self.latent_channels, tile_x,
                                       tile_y, overlap, progress).to(self.output_device)

    def get_sd(self) -> dict:
        return self.first_stage_model.state_dict()


# ---------------------------------------------------------------------------------------------
# Loading checkpoints


@dataclass(frozen=True)
class LoadedModels:
    model: ModelPatcher | None
    clip: CLIP | None
    vae: VAE | None


BASE_FAMILY = {"sd1_inpaint": "sd1", "sd1_ip2p": "sd1", "sd2_v": "sd2", "sd2_inpaint": "sd2", "sd2_unclip_h": "sd2",
               "sd2_unclip_l": "sd2", "sdxl_inpaint": "sdxl", "sdxl_ip2p": "sdxl"}


def family_of(info) -> str:
    """Model family name for latent format and conditioning ("sd1", "sd2", "sdxl", "sdxl_refiner")."""
    return BASE_FAMILY.get(info.family, info.family)


def diffusion_model_for(unet, info):
    """The DiffusionModel (or the variant class of its checkpoint family) over a loaded UNet."""
    from diffusion.model_variants import variant_class

    make = variant_class(info.family) or model_class_for(family_of(info))
    sampling = info.sampling
    latent_format = latent_format_for(sampling.latent_format) if sampling.latent_format else None
    model = make(unet, model_sampling_for(sampling), latent_format=latent_format, family=family_of(info))
    model.checkpoint_family = info.family
    return model


def _nhwc(manager: ModelManagement) -> bool:
    """Whether UNet conv weights are stored NHWC: where the UNet computes on the CPU in a reduced
    precision. In fp32 they stay NCHW, as in ComfyUI: NHWC kernels sum in another order, and fp32
    on the CPU gives ComfyUI's numbers bit for bit."""
    return manager.get_torch_device().type == "cpu" and manager.unet_dtype() != torch.float32


def _prepare_unet(unet, manager: ModelManagement):
    """Re-layout once at load: NHWC conv weights when the UNet computes on the CPU (a no-op for
    weights the loader already laid out so)."""
    if _nhwc(manager) and hasattr(unet, "to_channels_last"):
        unet.to_channels_last()
    return unet


def _component(path: Path, name: str) -> dict:
    """One component's tensors of a checkpoint, still in the file (read as they are converted)."""
    return split_components(stored_state_dict(path))[name]


def wrap_diffusion_model(unet, info, manager: ModelManagement, source: Path | None = None) -> ModelPatcher:
    """MODEL for a loaded UNet: a DiffusionModel under a ModelPatcher, registered with the service
    (rebuilt from `source` when released)."""
    model = diffusion_model_for(_prepare_unet(unet, manager), info)
    patcher = ModelPatcher(model, load_device=manager.get_torch_device(), offload_device=manager.unet_offload_device())
    patcher.manager = manager
    if source is not None:
        def rebuild():
            unet = load_unet(_component(source, "unet"), info.unet_config, manager.unet_inital_load_device(),
                             manager.unet_dtype(), source, channels_last=_nhwc(manager))
            return diffusion_model_for(_prepare_unet(unet, manager), info)
        manager.register(model, rebuild, name=f"UNet of {source.name}")
    else:
        manager.register(model, name="UNet")
    return patcher


def wrap_vae(vae: AutoencoderKL, manager: ModelManagement, source: Path | None = None) -> VAE:
    policy = manager.policy
    obj = VAE(vae, manager.vae_device(), policy.vae_dtype, manager.vae_offload_device(), manager)
    rebuild = None
    if source is not None:
        def rebuild():
            rebuilt = load_vae(stored_state_dict(source), manager.vae_offload_device(), policy.vae_dtype, source)
            return rebuilt.to_channels_last() if obj._nhwc() else rebuilt
    manager.register(vae, rebuild, name=f"VAE of {source.name}" if source else "VAE")
    return obj


def wrap_clip(text, manager: ModelManagement, embedding_dirs: list[Path], source: Path | None = None) -> CLIP:
    text.embeddings = EmbeddingDirectory(embedding_dirs)
    clip = CLIP(text, load_device=manager.text_encoder_device(), offload_device=manager.text_encoder_offload_device(),
                manager=manager)
    rebuild = None
    if source is not None:
        def rebuild():
            return load_text_encoder(_component(source, "text"), manager.text_encoder_offload_device(),
                                     manager.text_encoder_dtype(), source)
    manager.register(text, rebuild, name=f"text encoder of {source.name}" if source else "text encoder")
    return clip


def open_checkpoint(path: Path, manager: ModelManagement, embedding_dirs: list[Path]) -> LoadedModels:
    """MODEL, CLIP and VAE of a checkpoint file (CheckpointLoaderSimple)."""
    path = Path(path)
    manager.make_room_for_load(path.stat().st_size)
    policy = manager.policy
    loaded = load_checkpoint(path, device=manager.unet_inital_load_device(), unet_dtype=policy.unet_dtype,
                             vae_dtype=policy.vae_dtype, text_dtype=policy.text_dtype,
                             unet_channels_last=_nhwc(manager))
    info = loaded.info
    model = wrap_diffusion_model(loaded.unet, info, manager, path)
    clip = wrap_clip(loaded.text, manager, embedding_dirs, path) if loaded.text is not None else None
    vae = wrap_vae(loaded.vae, manager, path) if loaded.vae is not None else None
    return LoadedModels(model, clip, vae)


def open_vae(path: Path, manager: ModelManagement) -> VAE:
    path = Path(path)
    manager.make_room_for_load(path.stat().st_size)
    vae = load_vae(stored_state_dict(path), manager.vae_offload_device(), manager.policy.vae_dtype, path)
    return wrap_vae(vae, manager, path)


__all__ = ["CLIP", "LoadedModels", "VAE", "VAE_SCALE", "crop_to_multiple", "family_of", "is_out_of_memory",
           "open_checkpoint", "open_vae", "wrap_clip", "wrap_diffusion_model", "wrap_vae"]
