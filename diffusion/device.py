"""Where models run and in which dtype, and the memory facts the model-lifetime service uses.

`DevicePolicy` picks the compute device (CUDA when present unless told --cpu) and the dtype of
each component. CPU runs in float32: half precision there is slow and some kernels lack it.
Which models stay loaded is diffusion.model_management's job.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Device and dtype policy


def pick_device(cpu: bool = False, cuda_available: bool | None = None) -> torch.device:
    """CUDA device 0 when present and not refused, else the CPU."""
    probe = cuda_available is None
    if cpu or not (torch.cuda.is_available() if probe else cuda_available):
        return CPU
    # An explicit index: parameters report "cuda:0", and torch.device("cuda") compares unequal to it.
    return torch.device("cuda", torch.cuda.current_device() if probe else 0)


@dataclass(frozen=True)
class DevicePolicy:
    load_device: torch.device                  # where models compute
    offload_device: torch.device               # where idle models wait
    unet_dtype: torch.dtype
    text_dtype: torch.dtype
    vae_dtype: torch.dtype
    notes: tuple[str, ...] = field(default=())  # flags that were adjusted, for the startup log

    @classmethod
    def choose(cls, cpu: bool = False, force_fp32: bool = False, force_fp16: bool = False,
               force_bf16: bool = False, vae_dtype: str | None = None,
               cuda_available: bool | None = None, capability: tuple[int, int] | None = None) -> "DevicePolicy":
        """The policy for these flags; `cuda_available`/`capability` override the probe (tests).

        CUDA: fp16 weights from compute capability 7.0 (tensor cores; Pascal's fp16 is slow), fp32
        below; the VAE in bf16 from 8.0 and fp32 otherwise, because SD VAEs overflow in fp16 and
        decode to NaN. CPU: fp32 throughout. Forcing flags win, except that fp16 on the CPU becomes
        fp32 (noted) since several CPU kernels have no fp16 path.
        """
        device = pick_device(cpu, cuda_available)
        notes: list[str] = []
        if device.type == "cuda":
            cap = capability if capability is not None else torch.cuda.get_device_capability(device)
            model = torch.float16 if cap >= (7, 0) else torch.float32
            vae = torch.bfloat16 if cap >= (8, 0) else torch.float32
        else:
            model = vae = torch.float32
        if force_fp32:
            model = vae = torch.float32
        elif force_bf16:
            model = torch.bfloat16
        elif force_fp16:
            model = torch.float16
        if vae_dtype:
            vae = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[vae_dtype]
        if device.type == "cpu":
            if model == torch.float16:
                notes.append("fp16 requested on the CPU: using fp32")
                model = torch.float32
            if vae == torch.float16:
                notes.append("fp16 VAE requested on the CPU: using fp32")
                vae = torch.float32
        return cls(device, CPU, model, model, vae, tuple(notes))

    @classmethod
    def from_args(cls, args: Any) -> "DevicePolicy":
        """From parsed CLI flags (ComfyUI's names); flags the parser lacks count as off."""
        flag = lambda name: bool(getattr(args, name, False))  # noqa: E731
        vae = next((n for n in ("fp32", "fp16", "bf16") if flag(f"{n}_vae")), None)
        return cls.choose(cpu=flag("cpu"), force_fp32=flag("force_fp32"), force_fp16=flag("force_fp16"),
                          force_bf16=flag("bf16_unet"), vae_dtype=vae)


def inference_mode() -> contextlib.AbstractContextManager:
    """The context every model call runs under: no autograd graph, tensors marked inference-only."""
    return torch.inference_mode()


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_meta:
            continue
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def free_memory(device: torch.device) -> int:
    """Bytes that could still be allocated on `device` (CUDA: driver free + torch's cached free)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62   # unknown: do not evict on guesswork


# ---------------------------------------------------------------------------------------------
# Loaded-file cache


def file_identity(path: str | os.PathLike) -> tuple[str, int, int]:
    """(resolved path, size, mtime in ns): a file replaced in place is a different file."""
    path = Path(path).resolve()
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns
