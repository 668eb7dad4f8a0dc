"""Where models run and in which dtype, and the memory facts the model-lifetime service uses.

`DevicePolicy` picks the compute device (CUDA when present unless told --cpu) and the dtype of
each component. On a CPU with native bf16 (AVX512-BF16 or AMX) the UNet and VAE compute in bf16,
about 4x faster than fp32; elsewhere, and with --force-fp32, the CPU computes in fp32 throughout
as ComfyUI does. fp16 is never computed in on the CPU (slow, and some kernels lack it); the text
encoder's weights are stored in fp16 there, as ComfyUI's, but it always computes in fp32. Which
models stay loaded is diffusion.model_management's job.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

CPU = torch.device("cpu")
# "1" / "0" overrides the CPU bf16 probe: the test suite sets "0" so that its comparisons with
# ComfyUI's fp32 numbers keep running in fp32 on any machine, servers it starts included.
CPU_BF16_ENV = "LATENTGRAPH_CPU_BF16"
# /proc/cpuinfo flags of native bf16 arithmetic (AVX512-BF16 dot products, AMX tiles)
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_native_bf16(cpuinfo: str | None = None, capability: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively, so bf16 beats fp32 instead of being emulated.

    The CPU must advertise avx512_bf16 or amx_bf16 and torch must run its AVX512 kernels (an
    ATEN_CPU_CAPABILITY capped at AVX2 leaves bf16 emulated). `LATENTGRAPH_CPU_BF16` overrides;
    `cpuinfo` / `capability` stand in for /proc/cpuinfo and torch's probe in tests.
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if capability is None:
        capability = torch.backends.cpu.get_cpu_capability()
    if not capability.startswith("AVX512"):
        return False
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False   # not Linux: no reliable probe, fp32 is the safe choice
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & BF16_CPU_FLAGS)


# ---------------------------------------------------------------------------------------------
# Device and dtype policy


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # flags' names


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
    text_dtype: torch.dtype                    # storage only: text encoders compute in fp32
    vae_dtype: torch.dtype
    notes: tuple[str, ...] = field(default=())  # flags that were adjusted, for the startup log

    @classmethod
    def choose(cls, cpu: bool = False, force_fp32: bool = False, force_fp16: bool = False,
               force_bf16: bool = False, vae_dtype: str | None = None, text_dtype: str | None = None,
               cuda_available: bool | None = None, capability: tuple[int, int] | None = None,
               cpu_bf16: bool | None = None) -> "DevicePolicy":
        """The policy for these flags; `cuda_available`/`capability`/`cpu_bf16` override the probes.

        CUDA: fp16 weights from compute capability 7.0 (tensor cores; Pascal's fp16 is slow), fp32
        below; the VAE in bf16 from 8.0 and fp32 otherwise, because SD VAEs overflow in fp16 and
        decode to NaN. CPU: UNet and VAE in bf16 where the CPU has native bf16, else fp32.
        --force-fp32 gives fp32 UNet and VAE. Forcing flags win, except that fp16 on the CPU becomes
        fp32 (noted) since several CPU kernels have no fp16 path.

        The text encoder's storage dtype follows the UNet on a GPU and is fp16 on the CPU (ComfyUI's
        text_encoder_dtype, --force-fp32 included); `text_dtype` ("fp32", "fp16", "bf16": ComfyUI's
        --fp32-text-enc etc.) overrides it. Text encoders compute in fp32 whatever they store.
        """
        device = pick_device(cpu, cuda_available)
        notes: list[str] = []
        if device.type == "cuda":
            cap = capability if capability is not None else torch.cuda.get_device_capability(device)
            model = torch.float16 if cap >= (7, 0) else torch.float32
            vae = torch.bfloat16 if cap >= (8, 0) else torch.float32
        else:
            native = cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
            model = vae = torch.bfloat16 if native else torch.float32
            if native and not force_fp32:
                notes.append("the CPU has native bf16: UNet and VAE compute in bf16 "
                             "(--force-fp32 for ComfyUI's fp32 numerics)")
        if force_fp32:
            model = vae = torch.float32
        elif force_bf16:
            model = torch.bfloat16
        elif force_fp16:
            model = torch.float16
        if vae_dtype:
            vae = _DTYPES[vae_dtype]
        if device.type == "cpu":
            if model == torch.float16:
                notes.append("fp16 requested on the CPU: using fp32")
                model = torch.float32
            if vae == torch.float16:
                notes.append("fp16 VAE requested on the CPU: using fp32")
                vae = torch.float32
        text = model if device.type == "cuda" else torch.float16
        if text_dtype:
            text = _DTYPES[text_dtype]
        return cls(device, CPU, model, text, vae, tuple(notes))

    @classmethod
    def from_args(cls, args: Any) -> "DevicePolicy":
        """From parsed CLI flags (ComfyUI's names); flags the parser lacks count as off."""
        flag = lambda name: bool(getattr(args, name, False))  # noqa: E731
        vae = next((n for n in _DTYPES if flag(f"{n}_vae")), None)
        text = next((n for n in _DTYPES if flag(f"{n}_text_enc")), None)
        return cls.choose(cpu=flag("cpu"), force_fp32=flag("force_fp32"), force_fp16=flag("force_fp16"),
                          force_bf16=flag("bf16_unet"), vae_dtype=vae, text_dtype=text)


class _NoInitialValues(TorchFunctionMode):
    """Skips the random fills of parameter initialisation (torch.nn.init, Tensor.normal_ /
    uniform_) on meta tensors, which hold no values: on the meta device torch runs such fills
    through its Python reference kernels, whose first use imports torch._dynamo, sympy and more
    (about 75 MB of resident memory for the rest of the process, and a slower first load)."""

    _FILLS = (torch.Tensor.normal_, torch.Tensor.uniform_)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init" or func in self._FILLS:
            tensor = args[0] if args else kwargs.get("tensor")
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


@contextlib.contextmanager
def meta_skeleton():
    """Builds modules on the meta device (shapes only, no memory, no initial values) for
    weights that are assigned afterwards."""
    with torch.device("meta"), _NoInitialValues():
        yield


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


@torch.no_grad()
def conv_weights_channels_last(module: nn.Module) -> None:
    """Stores every Conv2d weight of `module` NHWC (same values), once, so oneDNN does not re-lay
    them out on each call on the CPU. Such weights need `.contiguous()` before safetensors saves them."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d) and not conv.weight.is_contiguous(memory_format=torch.channels_last):
            weight = conv.weight
            conv.weight = nn.Parameter(weight.detach().contiguous(memory_format=torch.channels_last),
                                       requires_grad=weight.requires_grad)


def in_weights_layout(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """4-d activations NHWC where `weight` (a 3x3 conv's, so its layout is unambiguous) was made
    NHWC by conv_weights_channels_last; otherwise as they are."""
    if x.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def release_freed_memory(device: torch.device | str) -> None:
    """After a model call: hand memory its activations held back to the system. CUDA: torch's
    cached blocks; CPU: glibc's freed heap pages, which would otherwise stay in RSS and add to the
    next node's peak (about 0.15 GB after sampling a 512x512 image)."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    else:
        trim_heap()


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, and RSS would not fall)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------------
# Loaded-file cache


def file_identity(path: str | os.PathLike) -> tuple[str, int, int]:
    """(resolved path, size, mtime in ns): a file replaced in place is a different file."""
    path = Path(path).resolve()
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns
