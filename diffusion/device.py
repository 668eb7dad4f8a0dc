"""Where models run and in which dtype; which loaded models stay in memory and on the GPU.

* `DevicePolicy` picks the compute device (CUDA when present unless told --cpu) and the dtype of
  each component. CPU runs in float32: half precision there is slow and some kernels lack it.
* `ModelCache` maps a file (path, size, mtime) plus load options to the object built from it, one
  slot per kind by default, so switching checkpoints drops the old one instead of piling them up.
* `ModelManager` keeps models on the compute device while room allows and moves the least
  recently used ones back to the CPU when a new model or a big activation needs space.

Nothing here is global: the runtime owns one policy, one cache and one manager and passes them on.
"""
from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

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


class ModelCache:
    """File -> loaded object, keeping `per_kind` objects per kind ("checkpoint", "vae", ...).

    Loading what is already cached (same file identity and options) returns the same object.
    Loading something new evicts the least recently used object of that kind, and the cache holds
    no other reference, so the old model is freed once its users let go of it.
    """

    def __init__(self, per_kind: int = 1):
        self.per_kind = per_kind
        self._slots: dict[str, OrderedDict[Hashable, Any]] = {}
        self._lock = threading.RLock()
        self.hits = self.misses = 0

    def get(self, kind: str, path: str | os.PathLike, loader: Callable[[Path], Any],
            options: Hashable = ()) -> Any:
        key = (*file_identity(path), options)
        with self._lock:
            slot = self._slots.setdefault(kind, OrderedDict())
            if key in slot:
                slot.move_to_end(key)
                self.hits += 1
                return slot[key]
            self.misses += 1
            # Make room before loading: holding the old model while reading the new one would
            # need both in memory at once.
            while len(slot) >= self.per_kind:
                slot.popitem(last=False)
            obj = loader(Path(path))
            slot[key] = obj
            return obj

    def evict(self, kind: str | None = None) -> None:
        with self._lock:
            if kind is None:
                self._slots.clear()
            else:
                self._slots.pop(kind, None)

    def __len__(self) -> int:
        return sum(len(s) for s in self._slots.values())


# ---------------------------------------------------------------------------------------------
# Placement on the compute device


@dataclass
class _Tracked:
    ref: weakref.ReferenceType
    size: int
    loaded: bool = False


class ModelManager:
    """Moves registered models to the compute device on use and off it, least recently used first,
    when room is short. Models are held by weak reference: the manager never keeps one alive.

    `free_fn()` reports free bytes on the compute device and `mover(model, device)` moves a model;
    both default to the real thing and are injectable so the policy is testable without a GPU.
    """

    def __init__(self, load_device: torch.device | str, offload_device: torch.device | str = CPU,
                 free_fn: Callable[[], int] | None = None,
                 mover: Callable[[nn.Module, torch.device], Any] | None = None, reserve: int = 0):
        self.load_device = torch.device(load_device)
        self.offload_device = torch.device(offload_device)
        self._free = free_fn or (lambda: free_memory(self.load_device))
        self._move = mover or (lambda model, device: model.to(device))
        self.reserve = reserve   # bytes always left free (other processes, fragmentation)
        self._models: OrderedDict[int, _Tracked] = OrderedDict()   # least recently used first
        self._lock = threading.RLock()

    @property
    def offloads(self) -> bool:
        return self.load_device != self.offload_device

    def register(self, model: nn.Module, size: int | None = None, loaded: bool | None = None) -> None:
        """Track `model` (size defaults to its weights' bytes; `loaded` to where its weights are)."""
        with self._lock:
            key = id(model)
            if key in self._models and self._models[key].ref() is model:
                return
            if loaded is None:
                param = next(model.parameters(), None)
                loaded = param is not None and param.device == self.load_device
            self._models[key] = _Tracked(weakref.ref(model, self._forget(key)), size or module_bytes(model), loaded)

    def _forget(self, key: int) -> Callable:
        def callback(_ref):
            with self._lock:
                entry = self._models.get(key)
                if entry is not None and entry.ref() is None:
                    del self._models[key]
        return callback

    def loaded_bytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._models.values() if e.loaded and e.ref() is not None)

    def is_loaded(self, model: nn.Module) -> bool:
        entry = self._models.get(id(model))
        return bool(entry and entry.ref() is model and entry.loaded)

    def ensure_room(self, nbytes: int, keep: Iterable[nn.Module] = ()) -> bool:
        """Offload least recently used models (except `keep`) until `nbytes` (+ reserve) are free.

        Returns whether that much is free now; callers with a fallback (tiled VAE) then use it.
        """
        if not self.offloads:
            return self._free() >= nbytes + self.reserve
        keep_ids = {id(m) for m in keep}
        with self._lock:
            for key, entry in list(self._models.items()):
                if self._free() >= nbytes + self.reserve:
                    break
                model = entry.ref()
                if model is None or not entry.loaded or key in keep_ids:
                    continue
                self._move(model, self.offload_device)
                entry.loaded = False
            enough = self._free() >= nbytes + self.reserve
        if not enough and self.load_device.type == "cuda":
            torch.cuda.empty_cache()
            enough = self._free() >= nbytes + self.reserve
        return enough

    def use(self, *models: nn.Module, extra_bytes: int = 0) -> None:
        """Mark `models` as most recently used and bring them to the compute device, making room
        for them plus `extra_bytes` of working memory."""
        with self._lock:
            for model in models:
                self.register(model)
                self._models.move_to_end(id(model))
            needed = sum(self._models[id(m)].size for m in models if not self._models[id(m)].loaded)
            self.ensure_room(needed + extra_bytes, keep=models)
            for model in models:
                entry = self._models[id(model)]
                if not entry.loaded:
                    self._move(model, self.load_device)
                    entry.loaded = True

    def offload(self, model: nn.Module) -> None:
        with self._lock:
            entry = self._models.get(id(model))
            if entry and entry.ref() is model and entry.loaded and self.offloads:
                self._move(model, self.offload_device)
                entry.loaded = False

    def offload_all(self) -> None:
        """What POST /free {"unload_models": true} asks for."""
        with self._lock:
            for entry in list(self._models.values()):
                model = entry.ref()
                if model is not None:
                    self.offload(model)
        if self.load_device.type == "cuda":
            torch.cuda.empty_cache()
