"""Reading model files safely, telling SD families apart, and building models without a second copy.

* `read_state_dict` decides the format from the file's bytes, never its name. safetensors goes
  through `safetensors.safe_open` (memory-mapped, lazily paged); zip/legacy pickles only through
  `torch.load(weights_only=True)`. A file *named* .safetensors whose bytes are a pickle is refused
  before anything is unpickled: the name is what users trust.
* `detect` reads family, configs and the noise schedule from key names, shapes and markers.
* `split_components` cuts a full checkpoint into UNet / VAE / text parts.
* `stored_state_dict` lists a safetensors file's tensors without reading them (`StoredTensor`);
  loaders read each one only when converting it, so a checkpoint never sits whole in memory.
* `materialize` builds a module on the meta device and assigns the loaded tensors to it, so the
  weights exist once in memory (their dtype-converted copy), never twice.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from .device import meta_skeleton, trim_heap
from .vae import AutoencoderKL, VAEConfig

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = ("cond_stage_model.", "conditioner.embedders.")

# Buffers of the original LDM training code that some released files still carry; no model here
# uses them (the sampler rebuilds its schedule), so they are dropped on split.
LDM_EXTRAS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
})
# Markers, not weights: ComfyUI's saver writes an empty top-level `v_pred` for v-prediction
# models (LatentGraph's first saver wrote `model.diffusion_model.v_pred`, read the same); `ztsnr`
# asks for zero-terminal-SNR, `edm_mean`/`edm_std` mark Playground v2.5 (EDM), and
# `edm_vpred.sigma_max`/`.sigma_min` a continuous-EDM v-prediction schedule with those bounds.
V_PRED_KEYS = ("v_pred", UNET_PREFIX + "v_pred")
EDM_VPRED_MAX, EDM_VPRED_MIN = "edm_vpred.sigma_max", "edm_vpred.sigma_min"
MARKER_KEYS = frozenset({*V_PRED_KEYS, "ztsnr", "edm_mean", "edm_std", EDM_VPRED_MAX, EDM_VPRED_MIN})

# The std rule for SD2.x: the 768-v models' final transformer norm bias is far more spread out.
_SD1_TOKENS = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
_SD1_TOKENS_OLD = "cond_stage_model.transformer.embeddings.token_embedding.weight"
SD2_V_PROBE = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
SD2_V_STD_THRESHOLD = 0.09

_MAX_HEADER = 100 << 20     # safetensors' own limit on the JSON header
# Most a file read at a time while converting a tensor: few, large copies, since each copy is a
# parallel region that waits for every thread (costly on a busy machine); and above glibc's
# largest mmap threshold (32 MB), so freeing the buffer returns it without changing the heap's rules.
_CONVERT_CHUNK = 64 << 20
_TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class CheckpointError(ValueError):
    """A model file that cannot be used; the message names the file and what did not match."""

    def __init__(self, source: str | os.PathLike | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


# ---------------------------------------------------------------------------------------------
# Reading files


def sniff_format(path: str | os.PathLike) -> str:
    """'safetensors', 'zip' (torch.save's default) or 'pickle' (legacy torch.save), from the bytes.

    safetensors headers are validated here in full (offsets against the file size) so a truncated
    download is reported by name instead of failing later inside a memory map.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
            if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
                return "zip"
            if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
                return "pickle"
            if len(head) >= 9 and head[8:9] == b"{":
                _check_safetensors_header(path, f, size)
                return "safetensors"
    except OSError as exc:
        raise CheckpointError(path, f"cannot read file: {exc.strerror or exc}") from None
    raise CheckpointError(path, _unknown_format(head, size))


def _unknown_format(head: bytes, size: int) -> str:
    if size == 0:
        return "file is empty"
    if head.startswith(b"version https://git-lfs"):
        return "this is a Git LFS pointer, not the model (fetch the real file with git lfs pull)"
    if head.lstrip().lower().startswith((b"<!doctype", b"<html")):
        return "this is an HTML page (a failed download?), not a model"
    if len(head) < 9:
        return f"file is only {size} bytes: truncated or not a model"
    return (f"unknown format: starts with {head[:8].hex()} — not safetensors (8-byte length + JSON), "
            "a zip archive or a pickle")


def _check_safetensors_header(path: Path, f, size: int) -> tuple[dict, int]:
    """(the header, where tensor data starts), every entry checked against the file size."""
    f.seek(0)
    (length,) = struct.unpack("<Q", f.read(8))
    if length > _MAX_HEADER:
        raise CheckpointError(path, f"safetensors header length {length} is implausible: damaged file")
    if 8 + length > size:
        raise CheckpointError(path, f"truncated: safetensors header needs {8 + length} bytes, file has {size}")
    try:
        header = json.loads(f.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "safetensors header is not a JSON object")
    data_size = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            itemsize = _TORCH_DTYPES[entry["dtype"]].itemsize
            begin, end = (int(v) for v in entry["data_offsets"])
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(path, f"safetensors entry {name!r} is malformed: {entry!r}"[:300]) from None
        if end - begin != count * itemsize or begin < 0:
            raise CheckpointError(path, f"tensor {name!r}: offsets {begin}..{end} do not fit shape "
                                        f"{entry['shape']} of {entry['dtype']}")
        if end > data_size:
            raise CheckpointError(path, f"truncated: tensor {name!r} needs data up to byte {end} but the file "
                                        f"holds {data_size} bytes of tensor data")
    return header, 8 + length


@dataclass(frozen=True)
class StoredTensor:
    """A tensor still in its safetensors file: key, shape and dtype known from the header, the
    bytes read only by `load`, into memory of its own, so a checkpoint can be converted tensor by
    tensor with nothing else of the file resident (a memory map of the whole file keeps every page
    it touched in the process's RSS until the last tensor viewing it is gone)."""
    path: Path
    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int             # of the first byte in the file
    nbytes: int

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return len(self.shape)

    def load(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
             memory_format: torch.memory_format | None = None, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor, a floating one in `dtype`, a 4-d one in `memory_format`, if given.

        A conversion reads the file through `buffer` (uint8, up to 64 MB; one is made if none is
        given), so no tensor larger than that exists in the file's dtype. Loading many tensors
        with one buffer also keeps the heap whole: glibc raises its mmap threshold whenever a large
        block is freed, after which freed temporaries would stay in RSS as holes.
        """
        target = dtype if dtype is not None and self.dtype.is_floating_point else self.dtype
        layout = memory_format if memory_format is not None and self.ndim == 4 else torch.contiguous_format
        out = torch.empty(self.shape, dtype=target, memory_format=layout)
        if self.nbytes:
            try:
                with open(self.path, "rb") as f:
                    f.seek(self.offset)
                    if target == self.dtype and layout == torch.contiguous_format:
                        self._read_into(f, out)
                    else:
                        self._read_converting(f, out, buffer)
            except OSError as exc:
                raise CheckpointError(self.path, f"cannot read tensor {self.key!r}: {exc.strerror or exc}") from None
        return out.to(device)

    def _read_into(self, f, out: torch.Tensor) -> None:
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        if f.readinto(view) != len(view):
            raise CheckpointError(self.path, f"truncated while reading tensor {self.key!r} (the file changed?)")

    def _read_converting(self, f, out: torch.Tensor, buffer: torch.Tensor | None) -> None:
        """Rows along the first dimension, as many per read as fit in the buffer."""
        rows = out.reshape(1) if self.ndim == 0 else out
        count = rows.shape[0]
        row_bytes = self.nbytes // count
        if buffer is None or buffer.numel() < row_bytes:
            buffer = torch.empty(max(row_bytes, min(self.nbytes, _CONVERT_CHUNK)), dtype=torch.uint8)
        step = buffer.numel() // row_bytes
        for first in range(0, count, step):
            n = min(step, count - first)
            part = buffer[:n * row_bytes]
            self._read_into(f, part)
            rows[first:first + n].copy_(part.view(self.dtype).view(n, *rows.shape[1:]))


def conversion_buffer(nbytes: int = _CONVERT_CHUNK) -> torch.Tensor:
    """Scratch memory for `StoredTensor.load` conversions, to reuse across a model's tensors:
    `nbytes` (the largest tensor to convert), at most _CONVERT_CHUNK."""
    return torch.empty(max(1, min(nbytes, _CONVERT_CHUNK)), dtype=torch.uint8)


def stored_state_dict(path: str | os.PathLike) -> dict[str, StoredTensor | torch.Tensor]:
    """Every tensor of a model file, not yet read: safetensors entries as `StoredTensor`s (shapes
    for detection, bytes on demand); other formats as `read_state_dict` gives them (a zip pickle
    memory-mapped by torch)."""
    path = Path(path)
    if sniff_format(path) != "safetensors":
        return read_state_dict(path)
    with open(path, "rb") as f:
        header, start = _check_safetensors_header(path, f, path.stat().st_size)
    out = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        dtype = _TORCH_DTYPES[entry["dtype"]]
        begin, end = (int(v) for v in entry["data_offsets"])
        out[key] = StoredTensor(path, key, dtype, tuple(int(d) for d in entry["shape"]), start + begin, end - begin)
    return out


def loaded(value):
    """A tensor from a state-dict value that may still be in its file."""
    return value.load() if isinstance(value, StoredTensor) else value


def read_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a model file, floating ones cast to `dtype` if given.

    Tensors come memory-mapped where the format allows (safetensors, zip), so reading costs file
    pages, not a copy, until something casts or moves them.
    """
    path = Path(path)
    fmt = sniff_format(path)
    if fmt != "safetensors" and path.suffix.lower() in (".safetensors", ".sft"):
        raise CheckpointError(path, f"named {path.suffix} but its bytes are a {fmt} archive (a renamed "
                                    "pickle?); refusing to unpickle it")
    if fmt == "safetensors":
        return _read_safetensors(path, device, dtype)
    return _read_pickle(path, fmt, device, dtype)


def _cast(t: torch.Tensor | StoredTensor, device, dtype: torch.dtype | None,
          memory_format: torch.memory_format | None = None, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """`t` on `device`, floating tensors in `dtype`; 4-d ones in `memory_format` if given (one copy
    does both). `buffer`: scratch for converting a StoredTensor."""
    if isinstance(t, StoredTensor):
        return t.load(device, dtype, memory_format, buffer)
    layout = {"memory_format": memory_format} if memory_format is not None and t.ndim == 4 else {}
    if dtype is not None and t.is_floating_point() and t.dtype != dtype:
        return t.to(device=device, dtype=dtype, **layout)
    return t.to(device=device, **layout)


def _read_safetensors(path: Path, device, dtype) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    device = torch.device(device)
    out = {}
    try:
        # safe_open maps the file; tensors on the CPU stay views of that map until cast.
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for key in f.keys():
                out[key] = _cast(f.get_tensor(key), device, dtype)
    except Exception as exc:   # the Rust side raises its own exception types
        raise CheckpointError(path, f"safetensors could not be read: {exc}") from None
    return out


def read_object(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """A model file as stored, not only its tensors: safetensors as a dict of tensors, a pickle as
    the object torch's weights-only unpickler rebuilds (dicts, lists, strings, numbers, tensors),
    e.g. an A1111 hypernetwork with its settings beside the weights."""
    path = Path(path)
    fmt = sniff_format(path)
    if fmt == "safetensors":
        return _read_safetensors(path, device, None)
    if path.suffix.lower() in (".safetensors", ".sft"):
        raise CheckpointError(path, f"named {path.suffix} but its bytes are a {fmt} archive (a renamed "
                                    "pickle?); refusing to unpickle it")
    return _unpickle(path, fmt, device)


def _unpickle(path: Path, fmt: str, device):
    import pickle

    try:
        # weights_only refuses every global outside torch's tensor allow-list, so a hostile pickle
        # raises here instead of running code; mmap needs the zip layout.
        obj = torch.load(path, map_location=torch.device(device), weights_only=True, mmap=fmt == "zip")
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(path, f"refused: the pickle needs more than plain tensors ({first})") from None
    except Exception as exc:
        raise CheckpointError(path, f"damaged {fmt} checkpoint: {type(exc).__name__}: {exc}"[:500]) from None
    return obj


def _read_pickle(path: Path, fmt: str, device, dtype) -> dict[str, torch.Tensor]:
    obj = _unpickle(path, fmt, device)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]   # LDM/Lightning training checkpoints wrap the weights
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a dict of tensors")
    out = {str(k): _cast(v, device, dtype) for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not out:
        raise CheckpointError(path, "holds no tensors")
    return out


# ---------------------------------------------------------------------------------------------
# Detection

FAMILY_TEXT = {"sd1": "clip_l", "sd1_inpaint": "clip_l", "sd1_ip2p": "clip_l", "sd2": "open_clip_h",
               "sd2_v": "open_clip_h", "sd2_inpaint": "open_clip_h", "sd2_unclip_h": "open_clip_h",
               "sd2_unclip_l": "open_clip_h", "sdxl": "clip_l+bigg", "sdxl_inpaint": "clip_l+bigg",
               "sdxl_ip2p": "clip_l+bigg", "sdxl_refiner": "bigg"}
# families read with SD2's v-prediction rule (ComfyUI's SD20.model_type, 4-channel UNets only)
SD2_V_RULE = ("sd2", "sd2_unclip_h", "sd2_unclip_l")
# unCLIP checkpoints carry their CLIP vision tower (OpenCLIP layout) under this prefix
UNCLIP_VISION_PREFIX = "embedder.model.visual."


@dataclass(frozen=True)
class Sampling:
    """A checkpoint's noise schedule and prediction as its markers set them (ComfyUI's model type
    and sampling settings): a discrete 1000-step table (optionally zero-terminal-SNR) or a
    continuous EDM axis over [sigma_min, sigma_max] with the given sigma_data."""
    prediction: str = "eps"            # eps, v_prediction, edm
    schedule: str = "discrete"         # discrete or edm
    zsnr: bool = False
    sigma_min: float = 0.002           # the edm schedule's bounds and data scale
    sigma_max: float = 120.0
    sigma_data: float = 1.0
    latent_format: str | None = None   # a latent format other than the family's (Playground v2.5)


V_PREDICTION = Sampling("v_prediction")
# Playground v2.5: EDM parameterisation, its own latent statistics (ComfyUI's SDXL.model_type)
PLAYGROUND_25 = Sampling("edm", "edm", sigma_min=0.002, sigma_max=80.0, sigma_data=0.5,
                         latent_format="sdxl_playground_2_5")


@dataclass(frozen=True)
class CheckpointInfo:
    family: str                    # sd1, sd1_inpaint, sd1_ip2p, sd2, sd2_v, sd2_inpaint, sd2_unclip_h/_l,
                                   # sdxl, sdxl_inpaint, sdxl_ip2p, sdxl_refiner
    prediction: str                # "eps" or "v_prediction"
    unet_config: object            # diffusion.unet.UNetConfig
    text_encoder: str              # clip_l, open_clip_h, clip_l+bigg, bigg (what the family uses)
    vae_config: VAEConfig | None   # None when the file carries no VAE
    has_text: bool                 # whether the file carries the text encoder weights
    unet_prefix: str = UNET_PREFIX
    notes: tuple[str, ...] = field(default=())
    sampling: Sampling = Sampling()    # schedule and prediction; `prediction` repeats its own


def text_encoder_kind(sd: Mapping[str, object]) -> str | None:
    """Which text encoder(s) the keys hold, or None."""
    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in sd)

    if has("conditioner.embedders.0.transformer.") and has("conditioner.embedders.1.model."):
        return "clip_l+bigg"
    if has("conditioner.embedders.0.model."):
        return "bigg"
    if has("cond_stage_model.model."):
        return "open_clip_h"
    if has("cond_stage_model.transformer."):
        return "clip_l"
    return None


def find_unet_prefix(sd: Mapping[str, object]) -> str | None:
    """The prefix under which UNet weights sit: the checkpoint's, or none for bare UNet files."""
    for prefix in (UNET_PREFIX, ""):
        if prefix + "input_blocks.0.0.weight" in sd:
            return prefix
    return None


def _not_a_checkpoint(sd: Mapping[str, object]) -> str:
    keys = list(sd)
    hint = ""
    if any(k.startswith(("lora_unet_", "lora_te", "lora_")) or ".lora_down." in k for k in keys):
        hint = " (it looks like a LoRA)"
    elif any(k.startswith(("control_model.", "zero_convs.")) for k in keys):
        hint = " (it looks like a ControlNet)"
    elif any(k.startswith(("down_blocks.", "unet.down_blocks.")) for k in keys):
        hint = " (it looks like a diffusers-format model, which this loader does not read)"
    elif any(k.startswith(("encoder.down.", VAE_PREFIX)) for k in keys) and not any("input_blocks" in k for k in keys):
        hint = " (it looks like a VAE on its own)"
    sample = ", ".join(sorted(keys)[:3])
    return (f"no UNet found: expected key {UNET_PREFIX}input_blocks.0.0.weight{hint}; "
            f"{len(keys)} keys, first: {sample or '(none)'}")


def _family_of(in_channels: int, context_dim: int, adm: int | None) -> str | None:
    if adm is None:
        if context_dim == 768:
            return {4: "sd1", 9: "sd1_inpaint", 8: "sd1_ip2p"}.get(in_channels)
        if context_dim == 1024:
            return {4: "sd2", 9: "sd2_inpaint"}.get(in_channels)
        return None
    if context_dim == 1024 and in_channels == 4:
        return {2048: "sd2_unclip_h", 1536: "sd2_unclip_l"}.get(adm)
    if context_dim == 2048 and adm == 2816:
        return {4: "sdxl", 9: "sdxl_inpaint", 8: "sdxl_ip2p"}.get(in_channels)
    if context_dim == 1280 and adm == 2560 and in_channels == 4:
        return "sdxl_refiner"
    return None


def unsupported_architecture(sd: Mapping[str, object], prefix: str) -> str | None:
    """What a UNet file is when it is an SD-derived model this engine does not run, else None."""
    unet = [k[len(prefix):] for k in sd if k.startswith(prefix)]
    if any(".time_stack." in k or ".time_mixer." in k for k in unet):
        return ("a Stable Video Diffusion (img2vid) model, which LatentGraph does not run (no video models); "
                "SD1.x, SD2.x and SDXL checkpoints are supported")
    if "cc_projection.weight" in sd:
        return "a Stable Zero123 model, which LatentGraph does not run"
    entry = sd.get(prefix + "input_blocks.0.0.weight")
    if entry is not None and tuple(entry.shape)[1:2] == (7,) and prefix + "label_emb.weight" in sd:
        return "the Stable Diffusion x4 upscaler, which LatentGraph does not run"
    return None


def _narrow_sd1(sd: Mapping[str, object], c) -> str | None:
    """sd1 / sd1_inpaint for a file in the SD1 layout whose CLIP-L-layout text encoder is narrower
    than 768 and exactly as wide as the UNet's cross-attention (the project's own small models,
    e.g. models_builtin/); the width is the one thing such a file changes."""
    if c.adm_in_channels is not None or c.in_channels not in (4, 9) or text_encoder_kind(sd) != "clip_l":
        return None
    table = next((sd[k] for k in (_SD1_TOKENS, _SD1_TOKENS_OLD) if k in sd), None)
    if table is None or tuple(table.shape)[-1] != c.context_dim:
        return None
    return "sd1" if c.in_channels == 4 else "sd1_inpaint"


def _sd2_is_v(sd: Mapping[str, object], prefix: str) -> bool | None:
    """ComfyUI's SD2 rule: v-prediction when the last transformer's norm1 bias has a population
    standard deviation above 0.09. None when the rule cannot be applied (no such key, as in UNets
    of another depth that ComfyUI would not take for SD2, or shapes only)."""
    probe = loaded(sd.get(prefix + SD2_V_PROBE[len(UNET_PREFIX):]))
    if not isinstance(probe, torch.Tensor) or probe.is_meta or probe.numel() < 2:
        return None
    return float(probe.float().std(unbiased=False)) > SD2_V_STD_THRESHOLD


def _scalar(sd: Mapping[str, object], key: str, source) -> float:
    value = loaded(sd[key])
    if not isinstance(value, torch.Tensor) or value.is_meta or value.numel() != 1:
        raise CheckpointError(source, f"marker {key!r} must hold one number, not {getattr(value, 'shape', value)!r}")
    return float(value.float().item())


def read_sampling(sd: Mapping[str, object], family: str, prefix: str = UNET_PREFIX,
                  source: str | os.PathLike | None = None) -> Sampling:
    """The schedule and prediction a `family` checkpoint asks for, decided as ComfyUI decides it
    (comfy/supported_models.py `model_type`):

    * SDXL base and its inpaint / ip2p forms: `edm_mean` + `edm_std` give Playground v2.5's EDM;
      else `edm_vpred.sigma_max` (and optional `.sigma_min`) v-prediction on a continuous EDM axis;
      else `v_pred` v-prediction, zero-terminal-SNR when `ztsnr` is present too; else eps.
    * SD2 with a 4-channel UNet (base, unCLIP): the standard-deviation rule; markers are not read
      (ComfyUI ignores them), except where the rule cannot apply, as for narrower test models.
    * Everything else (SD1.x, SD2 inpainting, the SDXL refiner): eps whatever the markers say.
    """
    marked_v = any(k in sd for k in V_PRED_KEYS)
    if family in ("sdxl", "sdxl_inpaint", "sdxl_ip2p"):
        if "edm_mean" in sd and "edm_std" in sd:
            return PLAYGROUND_25
        if EDM_VPRED_MAX in sd:
            bounds = {"sigma_max": _scalar(sd, EDM_VPRED_MAX, source)}
            if EDM_VPRED_MIN in sd:
                bounds["sigma_min"] = _scalar(sd, EDM_VPRED_MIN, source)
            return Sampling("v_prediction", "edm", **bounds)
        if marked_v:
            return Sampling("v_prediction", zsnr="ztsnr" in sd)
        return Sampling()
    if family in SD2_V_RULE:
        rule = _sd2_is_v(sd, prefix)
        return V_PREDICTION if (marked_v if rule is None else rule) else Sampling()
    return Sampling()


def detect(sd: Mapping[str, object], source: str | os.PathLike | None = None) -> CheckpointInfo:
    """Family, configs and schedule from keys and shapes (values only for the SD2 rule and the
    edm_vpred bounds)."""
    from .unet import UNetConfig

    prefix = find_unet_prefix(sd)
    if prefix is None:
        raise CheckpointError(source, _not_a_checkpoint(sd))
    other = unsupported_architecture(sd, prefix)
    if other is not None:
        raise CheckpointError(source, f"this is {other}")
    try:
        unet_config = UNetConfig.from_state_dict(sd, prefix=prefix)
    except ValueError as exc:
        raise CheckpointError(source, f"UNet keys do not match a known layout: {exc}") from None
    c = unet_config
    family = _family_of(c.in_channels, c.context_dim, c.adm_in_channels) or _narrow_sd1(sd, c)
    if family is None:
        raise CheckpointError(source, (
            f"UNet with in_channels={c.in_channels}, context_dim={c.context_dim}, "
            f"adm_in_channels={c.adm_in_channels} matches no known family (sd1: 4, 8 or 9/768/none, "
            f"sd2: 4 or 9/1024/none, sd2 unCLIP: 4/1024/2048 or 1536, sdxl: 4, 8 or 9/2048/2816, "
            f"sdxl_refiner: 4/1280/2560)"))

    sampling = read_sampling(sd, family, prefix, source)
    if family == "sd2" and sampling.prediction == "v_prediction":
        family = "sd2_v"

    kind = text_encoder_kind(sd)
    expected = FAMILY_TEXT[family]
    if kind is not None and kind != expected:
        raise CheckpointError(source, f"UNet is {family} (wants {expected} text encoder) but the text "
                                      f"encoder keys are {kind}")
    vae_config = None
    if any(k.startswith(VAE_PREFIX) for k in sd):
        try:
            vae_config = VAEConfig.from_state_dict(sd, VAE_PREFIX)
        except ValueError as exc:
            raise CheckpointError(source, f"VAE keys do not match: {exc}") from None
    return CheckpointInfo(family=family, prediction=sampling.prediction, unet_config=unet_config,
                          text_encoder=expected, vae_config=vae_config, has_text=kind is not None,
                          unet_prefix=prefix, sampling=sampling)


# ---------------------------------------------------------------------------------------------
# Splitting and building


def split_components(sd: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{"unet": keys minus `model.diffusion_model.`, "vae": minus `first_stage_model.`, "text": ...}.

    Text keys keep their full names (`cond_stage_model.*`, `conditioner.embedders.N.*`): which
    encoder a key belongs to is in that prefix, and `TextEncoder.from_state_dict` reads it so.
    LDM schedule buffers, EMA copies and marker keys are dropped; other unknown keys are ignored.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "vae": {}, "text": {}}
    for key, value in sd.items():
        if key in LDM_EXTRAS or key in MARKER_KEYS or key.startswith("model_ema."):
            continue
        if key.startswith(UNET_PREFIX):
            parts["unet"][key[len(UNET_PREFIX):]] = value
        elif key.startswith(VAE_PREFIX):
            parts["vae"][key[len(VAE_PREFIX):]] = value
        elif key.startswith(TEXT_PREFIXES):
            parts["text"][key] = value
    return parts


def materialize(factory: Callable[[], nn.Module], sd: dict[str, torch.Tensor],
                source: str | os.PathLike | None = None, what: str = "model") -> nn.Module:
    """Build `factory()` on the meta device and assign `sd`'s tensors as its weights.

    No parameter memory is allocated for the skeleton, and `assign=True` makes the loaded tensors
    the parameters themselves (their dtype and device as read), so nothing is copied.
    """
    with meta_skeleton():
        module = factory()
    try:
        result = module.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as exc:   # shape mismatches
        raise CheckpointError(source, f"{what} weights do not fit: {str(exc).splitlines()[-1].strip()}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} keys, e.g. {result.missing_keys[0]!r}")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected keys, e.g. {result.unexpected_keys[0]!r}")
    still_meta = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if still_meta and not result.missing_keys:
        problems.append(f"{len(still_meta)} tensors never loaded, e.g. {still_meta[0]!r}")
    if problems:
        raise CheckpointError(source, f"{what} weights do not match its architecture: " + "; ".join(problems))
    return module.requires_grad_(False).eval()


def _convert(sd: dict[str, torch.Tensor], device, dtype, memory_format=None) -> dict[str, torch.Tensor]:
    """Cast/move tensor by tensor, dropping each source reference as soon as it is converted."""
    out = {}
    stored = [v.nbytes for v in sd.values() if isinstance(v, StoredTensor)]
    buffer = conversion_buffer(max(stored)) if stored else None
    for key in list(sd):
        out[key] = _cast(sd.pop(key), device, dtype, memory_format, buffer)
    return out


def load_vae(sd: dict[str, torch.Tensor], device="cpu", dtype: torch.dtype | None = None,
             source: str | os.PathLike | None = None) -> AutoencoderKL:
    """An AutoencoderKL from VAE weights with or without the `first_stage_model.` prefix.

    Consumes `sd` (entries are popped as they are converted).
    """
    from .diffusers_layout import convert_vae_state_dict, is_diffusers_vae

    if any(k.startswith(VAE_PREFIX) for k in sd):
        sd = {k[len(VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}
    elif is_diffusers_vae(sd):  # a diffusers AutoencoderKL (vae/diffusion_pytorch_model.*), as ComfyUI reads it
        sd = convert_vae_state_dict({k: loaded(v) for k, v in sd.items()})
    else:
        # Stand-alone VAE files sometimes carry training leftovers (loss.*, model_ema.*).
        sd = {k: v for k, v in sd.items() if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))}
    try:
        config = VAEConfig.from_state_dict(sd, prefix="")
    except ValueError as exc:
        raise CheckpointError(source, f"not a KL autoencoder (original or diffusers layout): {exc}") from None
    weights = _convert(sd, device, dtype)
    return materialize(lambda: AutoencoderKL(config), weights, source, "VAE")


def load_unet(sd: dict[str, torch.Tensor], config, device="cpu", dtype: torch.dtype | None = None,
              source: str | os.PathLike | None = None, channels_last: bool = False) -> nn.Module:
    """A UNetModel from weights without prefix (consumes `sd`). `channels_last`: conv weights
    NHWC as the CPU computes them, laid out in the same copy that converts the dtype."""
    from .unet import UNetModel

    weights = _convert(sd, device, dtype, torch.channels_last if channels_last else None)
    return materialize(lambda: UNetModel(config), weights, source, "UNet")


def load_text_encoder(sd: dict[str, torch.Tensor], device="cpu", dtype: torch.dtype | None = None,
                      source: str | os.PathLike | None = None) -> nn.Module:
    """The TextEncoder of a checkpoint's text keys (full `cond_stage_model.` / `conditioner.`
    names; consumes `sd`)."""
    from .text_encoders import TextEncoder

    try:
        return TextEncoder.from_state_dict(_convert(sd, device, dtype), dtype=dtype, device=device)
    except ValueError as exc:
        raise CheckpointError(source, f"text encoder: {exc}") from None


@dataclass
class LoadedCheckpoint:
    info: CheckpointInfo
    unet: nn.Module | None
    vae: AutoencoderKL | None
    text: nn.Module | None          # diffusion.text_encoders.TextEncoder
    source: str


def load_checkpoint(path: str | os.PathLike, device="cpu", unet_dtype: torch.dtype | None = None,
                    vae_dtype: torch.dtype | None = None, text_dtype: torch.dtype | None = None,
                    components: tuple[str, ...] = ("unet", "vae", "text"),
                    unet_channels_last: bool = False) -> LoadedCheckpoint:
    """Read, detect and build the requested components; dtypes None keep the file's dtype.

    Each tensor is read from the file on its own, converted to its component's dtype and assigned
    to modules built on the meta device, so peak memory is the weights plus one tensor in the
    file's dtype (no map of the whole file stays resident, nothing is held twice).
    """
    sd = stored_state_dict(path)
    info = detect(sd, path)
    if info.unet_prefix != UNET_PREFIX:
        raise CheckpointError(path, "holds a bare UNet (no model.diffusion_model. prefix); load it as a "
                                    "diffusion model, not a checkpoint")
    parts = split_components(sd)
    del sd   # the parts hold the only references now, so converted tensors free their sources
    unet = vae = text = None
    # the file-dtype temporaries of each component are freed heap pages that glibc would keep:
    # handing them back between components keeps the peak near the converted weights
    if "unet" in components:
        unet = load_unet(parts.pop("unet"), info.unet_config, device, unet_dtype, path, unet_channels_last)
        trim_heap()
    if "vae" in components and parts["vae"]:
        vae = load_vae(parts.pop("vae"), device, vae_dtype, path)
        trim_heap()
    if "text" in components and parts["text"]:
        text = load_text_encoder(parts.pop("text"), device, text_dtype, path)
        trim_heap()
    return LoadedCheckpoint(info=info, unet=unet, vae=vae, text=text, source=str(path))
