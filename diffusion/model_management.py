"""The model-lifetime service: which networks hold memory where, and for how long.

One `ModelManagement` per runtime (ComfyUI keeps the same state in comfy.model_management's
module globals, which the compat module of that name forwards to this object):

* Loaders `register` every network they build with a way to rebuild its weights from the file,
  and go through `cached(kind, path, loader)` so the same file is loaded once.
* Sampling, text encoding and VAE calls ask for their ModelPatchers with `load_models_gpu`:
  the networks come to the compute device with the patcher's weight patches applied (once per
  patch set, see ModelPatcher.partially_load), and room is made first.
* Room: loaded weights on the compute device stay within a budget (what the device has free,
  less `--reserve-vram`, or `--model-memory-budget` when given). Beyond it, the least recently
  used network is offloaded to the CPU, or, where the compute device is the CPU, dropped: its
  tensors are released and rebuilt from the file on next use (the smallest network that makes
  the room goes first there, since each costs a read of its size). `--disable-smart-memory` frees
  every other network whenever one is loaded. `--lowvram` / `--novram` keep only part of (or
  none of) a UNet on the GPU and cast the rest per call; `--highvram` never offloads.
* `unload_all_models()` takes every network off the compute device; `drop_all()` (POST /free)
  also releases the weights of every network that can be rebuilt, so process memory falls.
"""
from __future__ import annotations

import gc
import logging
import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Hashable

import torch
from torch import nn

from .device import CPU, DevicePolicy, file_identity, trim_heap
from .device import free_memory as device_free_memory

log = logging.getLogger(__name__)

GB = 1 << 30
MB = 1 << 20


class VRAMState(Enum):
    DISABLED = 0     # no separate device memory: models are not moved
    NO_VRAM = 1      # keep no weights on the GPU, cast every module per call
    LOW_VRAM = 2     # load as much of a model as fits, cast the rest per call
    NORMAL_VRAM = 3
    HIGH_VRAM = 4    # keep models on the GPU, never offload
    SHARED = 5       # unified memory (MPS)


class CPUState(Enum):
    GPU = 0
    CPU = 1
    MPS = 2


@dataclass(frozen=True)
class MemoryOptions:
    """ComfyUI's memory flags, read once at start."""
    vram_state: VRAMState = VRAMState.NORMAL_VRAM
    reserve: int = 400 * MB            # --reserve-vram: kept free for other programs
    smart_memory: bool = True          # --disable-smart-memory turns this off
    budget: int | None = None          # --model-memory-budget: cap on loaded weights (bytes)

    @classmethod
    def from_args(cls, args: Any, device: torch.device) -> "MemoryOptions":
        flag = lambda name: getattr(args, name, None)  # noqa: E731
        if device.type == "cpu":
            state = VRAMState.DISABLED
        elif flag("lowvram"):
            state = VRAMState.LOW_VRAM
        elif flag("novram"):
            state = VRAMState.NO_VRAM
        elif flag("highvram") or flag("gpu_only"):
            state = VRAMState.HIGH_VRAM
        else:
            state = VRAMState.NORMAL_VRAM
        reserve = flag("reserve_vram")
        budget = flag("model_memory_budget")
        return cls(state, int(reserve * GB) if reserve is not None else 400 * MB, not flag("disable_smart_memory"),
                   int(budget * MB) if budget is not None else None)


@dataclass
class _Resident:
    """A network the service knows: its size and how to rebuild its tensors after a drop."""
    ref: weakref.ReferenceType
    size: int
    rebuild: Callable[[], nn.Module] | None = None
    name: str = ""
    dropped: bool = False
    stamp: int = 0                      # last use, for least-recently-used order


def _owner(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (root.get_submodule(path) if path else root), leaf


def _all_tensors(module: nn.Module):
    for name, _ in module.named_parameters(remove_duplicate=False):
        yield name, True
    for name, _ in module.named_buffers(remove_duplicate=False):
        yield name, False


def release_tensors(module: nn.Module) -> None:
    """Replace every parameter and buffer by a meta tensor of the same shape (frees the memory)."""
    with torch.no_grad():
        for name, is_param in list(_all_tensors(module)):
            owner, leaf = _owner(module, name)
            t = (owner._parameters if is_param else owner._buffers)[leaf]
            if t is None or t.is_meta:
                continue
            meta = torch.empty_like(t, device="meta")
            if is_param:
                owner._parameters[leaf] = nn.Parameter(meta, requires_grad=False)
            else:
                owner._buffers[leaf] = meta


def adopt_tensors(module: nn.Module, fresh: nn.Module) -> None:
    """Put `fresh`'s tensors (same architecture) into `module` by name, parameters and buffers."""
    source = dict(fresh.named_parameters(remove_duplicate=False))
    source.update(dict(fresh.named_buffers(remove_duplicate=False)))
    for name, is_param in list(_all_tensors(module)):
        owner, leaf = _owner(module, name)
        value = source.get(name)
        if value is None:
            raise RuntimeError(f"rebuilt {type(fresh).__name__} lacks {name!r}")
        if is_param:
            if not isinstance(value, nn.Parameter):
                value = nn.Parameter(value, requires_grad=False)
            owner._parameters[leaf] = value
        else:
            owner._buffers[leaf] = value


class LoadedModel:
    """A ModelPatcher whose network is on the compute device (ComfyUI's LoadedModel). Holds the
    patcher weakly: a patcher nobody uses any more lets its network go."""

    def __init__(self, model):
        self._model = weakref.ref(model)
        self.device = model.load_device
        self.currently_used = True

    @property
    def model(self):
        return self._model()

    def model_memory(self) -> int:
        return self.model.model_size()

    def model_loaded_memory(self) -> int:
        return self.model.loaded_size()

    def model_offloaded_memory(self) -> int:
        return self.model.model_size() - self.model.loaded_size()

    def model_memory_required(self, device) -> int:
        if device == self.model.current_loaded_device():
            return self.model_offloaded_memory()
        return self.model_memory()

    def model_load(self, lowvram_model_memory: float = 0, force_patch_weights: bool = False):
        self.model.model_patches_to(self.device)
        dtype = self.model.model_dtype()
        if dtype is not None:
            self.model.model_patches_to(dtype)
        self.model.partially_load(self.device, lowvram_model_memory or 1e32, force_patch_weights=force_patch_weights)
        return self.model.model

    def model_unload(self, memory_to_free: int | None = None, unpatch_weights: bool = True) -> bool:
        if memory_to_free is not None and memory_to_free < self.model.loaded_size():
            freed = self.model.partially_unload(self.model.offload_device, memory_to_free)
            if freed >= memory_to_free:
                return False
        self.model.detach(unpatch_weights)
        return True

    def model_use_more_vram(self, extra_memory, force_patch_weights=False):
        return self.model.partially_load(self.device, extra_memory, force_patch_weights=force_patch_weights)

    def is_dead(self) -> bool:
        return self.model is None

    def __eq__(self, other) -> bool:
        return isinstance(other, LoadedModel) and self.model is other.model

    __hash__ = object.__hash__


class ModelManagement:
    """The service itself; see the module docstring. Nothing here is global: the runtime owns one."""

    def __init__(self, policy: DevicePolicy | None = None, options: MemoryOptions | None = None,
                 free_fn: Callable[[torch.device], int] | None = None, cache_per_kind: int = 1):
        self.policy = policy or DevicePolicy.choose()
        self.options = options or MemoryOptions(VRAMState.DISABLED if self.policy.load_device.type == "cpu"
                                                else VRAMState.NORMAL_VRAM)
        self._free_fn = free_fn or device_free_memory
        self.current_loaded_models: list[LoadedModel] = []
        self._residents: dict[int, _Resident] = {}
        self._clock = 0
        self._lock = threading.RLock()
        self.cache_per_kind = cache_per_kind
        self._files: dict[str, OrderedDict[Hashable, Any]] = {}
        self.cache_hits = self.cache_misses = 0
        self.drops = self.rebuilds = 0
        self.interrupt = threading.Event()

    # -- devices and dtypes (ComfyUI's answers for this runtime) -------------------------------

    @property
    def vram_state(self) -> VRAMState:
        return self.options.vram_state

    def get_torch_device(self) -> torch.device:
        return self.policy.load_device

    def intermediate_device(self) -> torch.device:
        return CPU

    def unet_offload_device(self) -> torch.device:
        return self.get_torch_device() if self.vram_state == VRAMState.HIGH_VRAM else self.policy.offload_device

    def unet_inital_load_device(self, parameters=0, dtype=None) -> torch.device:
        if self.vram_state in (VRAMState.HIGH_VRAM, VRAMState.SHARED, VRAMState.DISABLED):
            return self.get_torch_device()
        return self.policy.offload_device

    def text_encoder_device(self) -> torch.device:
        return self.get_torch_device() if self.vram_state in (VRAMState.HIGH_VRAM, VRAMState.NORMAL_VRAM,
                                                              VRAMState.DISABLED) else CPU

    def text_encoder_offload_device(self) -> torch.device:
        return self.policy.offload_device

    def vae_device(self) -> torch.device:
        return self.get_torch_device()

    def vae_offload_device(self) -> torch.device:
        return self.policy.offload_device

    def unet_dtype(self, *args, **kwargs) -> torch.dtype:
        return self.policy.unet_dtype

    def text_encoder_dtype(self, *args, **kwargs) -> torch.dtype:
        return self.policy.text_dtype

    def vae_dtype(self, *args, **kwargs) -> torch.dtype:
        return self.policy.vae_dtype

    def extra_reserved_memory(self) -> int:
        return self.options.reserve

    def minimum_inference_memory(self) -> int:
        return int(0.8 * GB) + self.extra_reserved_memory()

    def get_total_memory(self, dev=None, torch_total_too=False):
        dev = torch.device(dev) if dev is not None else self.get_torch_device()
        if dev.type == "cuda":
            total = torch.cuda.mem_get_info(dev)[1]
            reserved = torch.cuda.memory_reserved(dev)
            return (total, reserved) if torch_total_too else total
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return (total, total) if torch_total_too else total

    def get_free_memory(self, dev=None, torch_free_too=False):
        """Bytes free on `dev` for models: the device's free memory, capped by the budget flag."""
        dev = torch.device(dev) if dev is not None else self.get_torch_device()
        free = max(0, self._room(dev)) if dev == self.get_torch_device() else self._free_fn(dev)
        if torch_free_too:
            torch_free = 0
            if dev.type == "cuda":
                torch_free = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
            return free, torch_free
        return free

    # -- registration ------------------------------------------------------------------------

    def register(self, network: nn.Module, rebuild: Callable[[], nn.Module] | None = None, name: str = "") -> None:
        """Track `network` (weights resident where they are now); `rebuild()` builds a copy of it from
        its file, whose tensors replace released ones when it is needed again."""
        with self._lock:
            key = id(network)
            resident = self._residents.get(key)
            if resident is not None and resident.ref() is network:
                resident.rebuild = rebuild or resident.rebuild
                return
            size = sum(t.nelement() * t.element_size() for t in network.state_dict().values())
            self._residents[key] = _Resident(weakref.ref(network, self._forget(key)), size, rebuild, name)
            self._touch(self._residents[key])

    def _forget(self, key: int):
        def callback(_ref):
            with self._lock:
                resident = self._residents.get(key)
                if resident is not None and resident.ref() is None:
                    del self._residents[key]
        return callback

    def _touch(self, resident: _Resident) -> None:
        self._clock += 1
        resident.stamp = self._clock

    def _resident(self, network: nn.Module) -> _Resident | None:
        r = self._residents.get(id(network))
        return r if r is not None and r.ref() is network else None

    def is_dropped(self, network: nn.Module) -> bool:
        r = self._resident(network)
        return bool(r and r.dropped)

    def resident_networks(self) -> list[nn.Module]:
        """Registered networks whose weights are in memory, least recently used first."""
        with self._lock:
            live = [(r.stamp, r.ref()) for r in self._residents.values() if not r.dropped]
        return [n for _, n in sorted(live, key=lambda x: x[0]) if n is not None]

    def loaded_bytes(self, device: torch.device) -> int:
        """Weights held on `device` by registered networks and loaded patchers."""
        device = torch.device(device)
        total = 0
        with self._lock:
            counted = set()
            for lm in self.current_loaded_models:
                m = lm.model
                if m is not None and lm.device == device:
                    total += m.loaded_size()
                    counted.add(id(m.model))
            if device.type == "cpu":
                for key, r in self._residents.items():
                    net = r.ref()
                    if net is not None and not r.dropped and key not in counted:
                        total += r.size
        return total

    # -- the file cache ----------------------------------------------------------------------

    def cached(self, kind: str, path, loader: Callable[[Path], Any], options: Hashable = ()) -> Any:
        """The object `loader(path)` built for this file (identity: path, size, mtime) and options,
        building it on a miss. Each kind keeps `cache_per_kind` objects; loading a new one first
        forgets the least recently used, so the old file's models can be freed before the new
        one's are read."""
        key = (*file_identity(path), options)
        with self._lock:
            slot = self._files.setdefault(kind, OrderedDict())
            if key in slot:
                slot.move_to_end(key)
                self.cache_hits += 1
                return slot[key]
            self.cache_misses += 1
            while len(slot) >= self.cache_per_kind:
                slot.popitem(last=False)
            gc.collect()
        obj = loader(Path(path))
        with self._lock:
            slot[key] = obj
        return obj

    def cached_paths(self, kind: str) -> list[str]:
        """Resolved paths of the files of one kind in the file cache (what a worker holds)."""
        with self._lock:
            return [key[0] for key in self._files.get(kind, ())]

    def cached_count(self) -> int:
        with self._lock:
            return sum(len(slot) for slot in self._files.values())

    def forget_files(self, kind: str | None = None) -> None:
        with self._lock:
            if kind is None:
                self._files.clear()
            else:
                self._files.pop(kind, None)

    def make_room_for_load(self, nbytes: int, device: torch.device | None = None) -> None:
        """Before a loader reads `nbytes` of weights onto `device`: free what the budget needs."""
        device = torch.device(device) if device is not None else self.policy.offload_device
        self._free_within_budget(nbytes, device, keep=())

    # -- loading for use ---------------------------------------------------------------------

    def _rebuild(self, network: nn.Module) -> None:
        r = self._resident(network)
        if r is None or not r.dropped:
            return
        if r.rebuild is None:
            raise RuntimeError(f"{r.name or type(network).__name__} was released and cannot be rebuilt")
        log.info("reloading %s from its file", r.name or type(network).__name__)
        fresh = r.rebuild()
        adopt_tensors(network, fresh)
        r.dropped = False
        self.rebuilds += 1

    def _drop(self, network: nn.Module) -> bool:
        """Release `network`'s tensors (only when it can be rebuilt); its patcher is unloaded first."""
        r = self._resident(network)
        if r is None or r.dropped or r.rebuild is None:
            return False
        for lm in list(self.current_loaded_models):
            if lm.model is not None and lm.model.model is network:
                lm.model_unload()
                self.current_loaded_models.remove(lm)
        release_tensors(network)
        r.dropped = True
        self.drops += 1
        log.info("released %s (%.1f MB)", r.name or type(network).__name__, r.size / MB)
        return True

    def _free_within_budget(self, needed: int, device: torch.device, keep) -> None:
        """On the CPU, release networks not in `keep` until `needed` more bytes fit the budget (0:
        until what is held fits it), or, without smart memory, release them all.

        A released network costs a read of its file when it is used again, so the one released is
        the smallest that makes the room alone (the least recently used of equals); only when none
        is large enough do the least recently used go in turn. Plain LRU would release the UNet
        while the prompt is encoded, since text encoder, UNet and VAE take turns."""
        if device.type != "cpu" or self.get_torch_device().type != "cpu":
            return
        keep_ids = {id(n) for n in keep}
        dropped = False
        while True:
            shortfall = needed - self._room(device)
            if self.options.smart_memory and shortfall <= 0:
                break
            candidates = [(r.size, n) for n in self.resident_networks()
                          if id(n) not in keep_ids and (r := self._resident(n)).rebuild is not None]
            if not candidates:
                break
            enough = [c for c in candidates if c[0] >= shortfall]
            victim = min(enough, key=lambda c: c[0])[1] if enough and self.options.smart_memory else candidates[0][1]
            dropped = self._drop(victim) or dropped
        if dropped:   # a full collection costs tens of ms in a large process: only when it frees weights
            gc.collect()

    def _room(self, device: torch.device) -> int:
        """What more `device` takes: its free memory, or, under a budget, what is left of it (negative
        when the weights held exceed it)."""
        free = self._free_fn(device)
        if self.options.budget is None:
            return free
        return min(free, self.options.budget - self.loaded_bytes(device))

    def free_memory(self, memory_required, device, keep_loaded=()) -> list:
        """Unload models from `device` (least recently used and most offloadable first) until
        `memory_required` bytes are free; returns the LoadedModels unloaded."""
        device = torch.device(device)
        unloaded = []
        with self._lock:
            candidates = []
            for i in range(len(self.current_loaded_models) - 1, -1, -1):
                lm = self.current_loaded_models[i]
                if lm.device == device and lm not in keep_loaded and not lm.is_dead():
                    # Partly offloaded ones first (cheapest to finish), then least recently used
                    # (the list is most recent first, so a larger index is older).
                    candidates.append((-lm.model_offloaded_memory(), -i, i))
                    lm.currently_used = False
            chosen = []
            for _, _, i in sorted(candidates):
                to_free = None
                if self.options.smart_memory:
                    free = self.get_free_memory(device)
                    if free > memory_required:
                        break
                    to_free = memory_required - free
                if self.current_loaded_models[i].model_unload(to_free):
                    chosen.append(i)
            for i in sorted(chosen, reverse=True):
                unloaded.append(self.current_loaded_models.pop(i))
        if unloaded:
            self.soft_empty_cache()
        return unloaded

    def load_models_gpu(self, models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False) -> None:
        """Bring these ModelPatchers' networks to their load device with their patches applied."""
        with self._lock:
            self.cleanup_models()
            inference_memory = self.minimum_inference_memory()
            extra_mem = max(inference_memory, memory_required + self.extra_reserved_memory())
            if minimum_memory_required is None:
                minimum_memory_required = extra_mem
            else:
                minimum_memory_required = max(inference_memory, minimum_memory_required + self.extra_reserved_memory())
            wanted = []
            for m in models:
                if m is None:
                    continue
                for mm in [m] + list(m.model_patches_models()):
                    if all(mm is not w for w in wanted):
                        wanted.append(mm)
            networks = [m.model for m in wanted]
            for net in networks:
                if self._resident(net) is None:
                    self.register(net)
            # Released networks come back first (room for them is made on the CPU side).
            for m in wanted:
                if self.is_dropped(m.model):
                    self._free_within_budget(self._resident(m.model).size, self.policy.offload_device, networks)
                    self._rebuild(m.model)
            to_load = []
            for m in wanted:
                lm = LoadedModel(m)
                found = next((x for x in self.current_loaded_models if x == lm), None)
                if found is not None:
                    found.currently_used = True
                    to_load.append(found)
                else:
                    to_load.append(lm)
            for lm in to_load:
                # Another patcher of the same network leaves; this one re-patches as needed.
                for other in [x for x in self.current_loaded_models if x is not lm and x.model is not None
                              and lm.model.is_clone(x.model)]:
                    self.current_loaded_models.remove(other)
                    other.model.detach(unpatch_all=False)
            totals: dict[torch.device, int] = {}
            for lm in to_load:
                totals[lm.device] = totals.get(lm.device, 0) + lm.model_memory_required(lm.device)
            for device, total in totals.items():
                if device.type != "cpu":
                    self.free_memory(total * 1.1 + extra_mem, device, keep_loaded=to_load)
                    if self.get_free_memory(device) < minimum_memory_required:
                        self.free_memory(minimum_memory_required, device, keep_loaded=to_load)
                else:   # every network asked for is in memory by now (rebuilt above)
                    self._free_within_budget(0, device, networks)
            for lm in to_load:
                device = lm.model.load_device
                state = VRAMState.DISABLED if device.type == "cpu" else self.vram_state
                lowvram_model_memory = 0
                if state in (VRAMState.LOW_VRAM, VRAMState.NORMAL_VRAM) and not force_full_load:
                    loaded = lm.model_loaded_memory()
                    free = self.get_free_memory(device) + loaded
                    lowvram_model_memory = max(128 * MB, free - minimum_memory_required,
                                               min(free * 0.4, free - self.minimum_inference_memory()))
                    lowvram_model_memory = max(0.1, lowvram_model_memory - loaded)
                if state == VRAMState.NO_VRAM:
                    lowvram_model_memory = 0.1
                lm.model_load(lowvram_model_memory, force_patch_weights=force_patch_weights)
                if lm in self.current_loaded_models:
                    self.current_loaded_models.remove(lm)
                self.current_loaded_models.insert(0, lm)
                r = self._resident(lm.model.model)
                if r is not None:
                    self._touch(r)

    def load_model_gpu(self, model) -> None:
        self.load_models_gpu([model])

    def loaded_models(self, only_currently_used: bool = False) -> list:
        return [lm.model for lm in self.current_loaded_models
                if lm.model is not None and (lm.currently_used or not only_currently_used)]

    def cleanup_models(self) -> None:
        self.current_loaded_models[:] = [lm for lm in self.current_loaded_models if not lm.is_dead()]

    def cleanup_models_gc(self) -> None:
        self.cleanup_models()

    def soft_empty_cache(self, force: bool = False) -> None:
        if torch.cuda.is_available() and self.get_torch_device().type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.ipc_collect()

    def unload_all_models(self) -> None:
        """Every model off the compute device (ComfyUI's unload_all_models)."""
        with self._lock:
            for lm in list(self.current_loaded_models):
                if lm.model is not None:
                    lm.model_unload()
            self.current_loaded_models.clear()
        self.soft_empty_cache()

    def drop_all(self) -> int:
        """POST /free: unload everything and release the weights of every rebuildable network."""
        with self._lock:
            self.unload_all_models()
            dropped = sum(self._drop(net) for net in self.resident_networks())
        gc.collect()
        trim_heap()
        self.soft_empty_cache()
        return dropped


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False) -> None:
    """Load ModelPatchers through the service that owns them (`patcher.manager`, set by the
    loaders); patchers built outside a runtime are patched in place on their load device."""
    models = [m for m in models if m is not None]
    manager = next((m.manager for m in models if getattr(m, "manager", None) is not None), None)
    if manager is not None:
        manager.load_models_gpu(models, memory_required=memory_required, force_patch_weights=force_patch_weights,
                                minimum_memory_required=minimum_memory_required, force_full_load=force_full_load)
        return
    for m in models:
        m.partially_load(m.load_device, 1e32, force_patch_weights=force_patch_weights)


def use_models(models, **kwargs) -> None:
    """How the engine asks for models before using them: through comfy.model_management's
    load_models_gpu when a plugin may have replaced it, else `load_models_gpu` above."""
    from .overrides import comfy_function
    comfy_function("comfy.model_management", "load_models_gpu", load_models_gpu)(list(models), **kwargs)


__all__ = ["CPUState", "LoadedModel", "MemoryOptions", "ModelManagement", "VRAMState", "adopt_tensors",
           "load_models_gpu", "release_tensors", "use_models"]
