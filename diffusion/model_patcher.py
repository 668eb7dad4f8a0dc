"""ModelPatcher: what a MODEL (and, inside CLIP and VAE objects, each network) is between nodes.

A ModelPatcher pairs one shared network (`.model`, a DiffusionModel for MODEL) with what one
branch of the workflow changed about it, without copying the network:
* `model_options`: sampling hooks (cfg / pre-cfg / post-cfg functions, a UNet function wrapper,
  a denoise-mask function) and `transformer_options` (attention and block patches, attention
  replacements, wrappers), all read by the sampler and the UNet at call time;
* `patches`: weight patches per state-dict key (LoRA and the other formats of diffusion.patches);
* `object_patches`: attributes of the model replaced while this patcher is the one loaded
  (e.g. "model_sampling").
`clone()` copies those and shares the network, so nodes that add a LoRA or a hook return a
clone and the input MODEL is unchanged. The API is ComfyUI's (comfy.model_patcher.ModelPatcher)
because plugins call it directly.

Weight patches are applied when the model-lifetime service loads the patcher for use
(`partially_load` -> `load`), once per patch set: the model remembers the `patches_uuid` it was
patched for, and a later load with the same set does nothing. The original tensors are kept in
`backup` (shared by all clones of a network; a reference on the CPU, a CPU copy when the
weights live on a GPU) and put back, bit for bit, before another set is applied or when the
model is unloaded. Modules that do not fit the device budget ("lowvram") stay on the offload
device and are cast to the compute device, with their patches applied, for each call.
"""
from __future__ import annotations

import collections
import copy
import inspect
import logging
import math
import uuid
from typing import Callable

import torch
from torch import nn

from . import patcher_extension as pe
from .hooks import EnumHookMode
from .overrides import comfy_function
from .patches import calculate_weight

log = logging.getLogger(__name__)

Backup = collections.namedtuple("Backup", ["weight", "inplace_update"])


# -- attribute paths ---------------------------------------------------------------------------

def get_attr(obj, attr: str):
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr(obj, attr: str, value):
    """Set a dotted attribute; returns the previous value."""
    *path, name = attr.split(".")
    for part in path:
        obj = getattr(obj, part)
    previous = getattr(obj, name)
    setattr(obj, name, value)
    return previous


def set_attr_param(obj, attr: str, value: torch.Tensor):
    """Replace a parameter (or buffer) tensor; a parameter stays a frozen nn.Parameter."""
    *path, name = attr.split(".")
    owner = obj
    for part in path:
        owner = getattr(owner, part)
    if name in owner._buffers:
        previous = owner._buffers[name]
        owner._buffers[name] = value
        return previous
    previous = owner._parameters.get(name)
    owner._parameters[name] = value if isinstance(value, nn.Parameter) else nn.Parameter(value, requires_grad=False)
    return previous


def copy_to_param(obj, attr: str, value: torch.Tensor) -> None:
    get_attr(obj, attr).data.copy_(value)


def module_size(module: nn.Module) -> int:
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


def set_model_options_patch_replace(model_options: dict, patch, name: str, block_name: str, number: int,
                                    transformer_index=None) -> dict:
    to = dict(model_options["transformer_options"])
    replace = dict(to.get("patches_replace", {}))
    replace[name] = dict(replace.get(name, {}))
    block = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
    replace[name][block] = patch
    to["patches_replace"] = replace
    model_options["transformer_options"] = to
    return model_options


def set_model_options_post_cfg_function(model_options: dict, post_cfg_function, disable_cfg1_optimization=False):
    functions = model_options.get("sampler_post_cfg_function", [])
    model_options["sampler_post_cfg_function"] = functions + [post_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


def set_model_options_pre_cfg_function(model_options: dict, pre_cfg_function, disable_cfg1_optimization=False):
    model_options["sampler_pre_cfg_function"] = model_options.get("sampler_pre_cfg_function", []) + [pre_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


def create_model_options_clone(orig_model_options: dict) -> dict:
    return pe.copy_nested_dicts(orig_model_options)


def string_to_seed(data: str) -> int:
    """CRC-32 of a key, the seed ComfyUI's stochastic rounding uses per weight."""
    import zlib
    return zlib.crc32(data.encode() if isinstance(data, str) else bytes(data))


class LowVramPatch:
    """A weight function for a module kept off the compute device: its patches applied to the
    weight as cast for one call."""

    def __init__(self, key: str, patches: dict, convert_func=None, set_func=None):
        self.key, self.patches = key, patches
        self.convert_func, self.set_func = convert_func, set_func

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        dtype = weight.dtype
        work = weight.to(torch.float32, copy=True)
        out = comfy_function("comfy.lora", "calculate_weight", calculate_weight)(self.patches[self.key], work, self.key)
        return out.to(dtype)


class _CastOnCall:
    """Forward hooks that give a module on-device copies of its own tensors for one call, each
    weight through its functions (patches applied), and put the offloaded ones back afterwards."""

    def __init__(self, module: nn.Module, device: torch.device, functions: dict[str, list] | None = None):
        self.device = device
        self.functions = functions or {}
        self.saved: dict = {}
        self.handles = [module.register_forward_pre_hook(self.before), module.register_forward_hook(self.after)]

    def before(self, module, args):
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            self.saved[name] = param
            value = param.detach().to(self.device, non_blocking=True)
            for f in self.functions.get(name, ()):
                value = f(value)
            module._parameters[name] = nn.Parameter(value, requires_grad=False)
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.device != self.device:
                self.saved["buffer:" + name] = buf
                module._buffers[name] = buf.to(self.device)

    def after(self, module, args, output):
        for name, value in self.saved.items():
            if name.startswith("buffer:"):
                module._buffers[name[7:]] = value
            else:
                module._parameters[name] = value
        self.saved.clear()

    def remove(self):
        for h in self.handles:
            h.remove()


def _cast_per_call(module: nn.Module, device, functions: dict[str, list]) -> None:
    """Keep `module` off the compute device; its weights (patched by `functions`) are cast per call.
    ComfyUI plugins look for weight_function / bias_function on such modules."""
    module.weight_function = functions.setdefault("weight", [])
    module.bias_function = functions.setdefault("bias", [])
    module._lg_cast = _CastOnCall(module, device, functions)


def _stop_casting(module: nn.Module) -> None:
    cast = getattr(module, "_lg_cast", None)
    if cast is not None:
        cast.remove()
        module._lg_cast = None
    if hasattr(module, "weight_function"):
        module.weight_function, module.bias_function = [], []


def _own_to(module: nn.Module, device) -> None:
    """Move a module's own parameters and buffers (not its children's)."""
    for name, p in list(module._parameters.items()):
        if p is not None and p.device != torch.device(device):
            module._parameters[name] = nn.Parameter(p.detach().to(device), requires_grad=False)
    for name, b in list(module._buffers.items()):
        if b is not None:
            module._buffers[name] = b.to(device)


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size: int = 0, weight_inplace_update: bool = False):
        self.size = size
        self.model = model
        if getattr(model, "device", None) is None:
            model.device = offload_device
        self.patches: dict[str, list] = {}
        self.backup: dict[str, Backup] = {}
        self.object_patches: dict[str, object] = {}
        self.object_patches_backup: dict[str, object] = {}
        self.weight_wrapper_patches: dict[str, list] = {}
        self.model_options: dict = {"transformer_options": {}}
        self.load_device = torch.device(load_device)
        self.offload_device = torch.device(offload_device)
        self.model_size()
        self.weight_inplace_update = weight_inplace_update
        self.force_cast_weights = False
        self.patches_uuid = uuid.uuid4()
        self.parent: ModelPatcher | None = None
        self.attachments: dict = {}
        self.additional_models: dict[str, list[ModelPatcher]] = {}
        self.callbacks: dict = pe.CallbacksMP.init_callbacks()
        self.wrappers: dict = pe.WrappersMP.init_wrappers()
        self.is_injected = False
        self.skip_injection = False
        self.injections: dict[str, list] = {}
        self.hook_patches: dict = {}
        self.hook_patches_backup = None
        self.hook_backup: dict = {}
        self.cached_hook_patches: dict = {}
        self.current_hooks = None
        self.forced_hooks = None
        self.is_clip = False
        self.hook_mode = EnumHookMode.MaxSpeed
        for name, default in (("model_loaded_weight_memory", 0), ("lowvram_patch_counter", 0),
                              ("model_lowvram", False), ("current_weight_patches_uuid", None)):
            if not hasattr(model, name):
                setattr(model, name, default)

    # -- size and identity ---------------------------------------------------------------------

    def model_size(self) -> int:
        if self.size > 0:
            return self.size
        self.size = module_size(self.model)
        return self.size

    def loaded_size(self) -> int:
        return self.model.model_loaded_weight_memory

    def lowvram_patch_counter(self) -> int:
        return self.model.lowvram_patch_counter

    def clone(self) -> "ModelPatcher":
        n = self.__class__.__new__(self.__class__)
        ModelPatcher.__init__(n, self.model, self.load_device, self.offload_device, self.size,
                              weight_inplace_update=self.weight_inplace_update)
        for k, v in self.__dict__.items():  # subclasses' own attributes (CLIP/VAE wrappers) carry over
            if k not in n.__dict__:
                n.__dict__[k] = v
        n.patches = {k: list(v) for k, v in self.patches.items()}
        n.patches_uuid = self.patches_uuid
        n.object_patches = dict(self.object_patches)
        n.weight_wrapper_patches = dict(self.weight_wrapper_patches)
        n.model_options = copy.deepcopy(self.model_options)
        n.backup = self.backup
        n.object_patches_backup = self.object_patches_backup
        n.parent = self
        n.force_cast_weights = self.force_cast_weights
        n.attachments = {k: (v.on_model_patcher_clone() if hasattr(v, "on_model_patcher_clone") else v)
                         for k, v in self.attachments.items()}
        n.additional_models = {k: [m.clone() for m in v] for k, v in self.additional_models.items()}
        n.callbacks = {k: {k1: list(c1) for k1, c1 in c.items()} for k, c in self.callbacks.items()}
        n.wrappers = {k: {k1: list(w1) for k1, w1 in w.items()} for k, w in self.wrappers.items()}
        n.is_injected, n.skip_injection = self.is_injected, self.skip_injection
        n.injections = {k: list(v) for k, v in self.injections.items()}
        n.hook_patches = {k: {kk: list(vv) for kk, vv in v.items()} for k, v in self.hook_patches.items()}
        n.hook_backup = self.hook_backup
        n.hook_patches_backup = None if self.hook_patches_backup is None else \
            {k: {kk: list(vv) for kk, vv in v.items()} for k, v in self.hook_patches_backup.items()}
        n.cached_hook_patches = {group: dict(weights) for group, weights in self.cached_hook_patches.items()}
        n.current_hooks = self.current_hooks.clone() if self.current_hooks else self.current_hooks
        n.forced_hooks = self.forced_hooks.clone() if self.forced_hooks else self.forced_hooks
        n.is_clip, n.hook_mode = self.is_clip, self.hook_mode
        for callback in self.get_all_callbacks(pe.CallbacksMP.ON_CLONE):
            callback(self, n)
        return n

    def is_clone(self, other) -> bool:
        return getattr(other, "model", None) is self.model

    def clone_has_same_weights(self, clone: "ModelPatcher") -> bool:
        if not self.is_clone(clone):
            return False
        if (self.attachments.keys() != clone.attachments.keys()
                or self.additional_models.keys() != clone.additional_models.keys()
                or self.injections.keys() != clone.injections.keys()):
            return False
        if (self.current_hooks is not clone.current_hooks or self.forced_hooks is not clone.forced_hooks
                or self.hook_patches.keys() != clone.hook_patches.keys()):
            return False
        if not self.patches and not clone.patches:
            return True
        return self.patches_uuid == clone.patches_uuid and len(self.patches) == len(clone.patches)

    def memory_required(self, input_shape) -> float:
        return self.model.memory_required(input_shape=input_shape)

    def model_dtype(self):
        if hasattr(self.model, "get_dtype"):
            return self.model.get_dtype()
        return None

    # -- sampling hooks (model_options) --------------------------------------------------------

    def set_model_sampler_cfg_function(self, sampler_cfg_function, disable_cfg1_optimization=False):
        if len(inspect.signature(sampler_cfg_function).parameters) == 3:  # the old (cond, uncond, scale) form
            self.model_options["sampler_cfg_function"] = \
                lambda args: sampler_cfg_function(args["cond"], args["uncond"], args["cond_scale"])
        else:
            self.model_options["sampler_cfg_function"] = sampler_cfg_function
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(self, post_cfg_function, disable_cfg1_optimization=False):
        self.model_options = set_model_options_post_cfg_function(self.model_options, post_cfg_function,
                                                                 disable_cfg1_optimization)

    def set_model_sampler_pre_cfg_function(self, pre_cfg_function, disable_cfg1_optimization=False):
        self.model_options = set_model_options_pre_cfg_function(self.model_options, pre_cfg_function,
                                                                disable_cfg1_optimization)

    def set_model_sampler_calc_cond_batch_function(self, fn):
        self.model_options["sampler_calc_cond_batch_function"] = fn

    def set_model_unet_function_wrapper(self, unet_wrapper_function):
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def set_model_denoise_mask_function(self, denoise_mask_function):
        self.model_options["denoise_mask_function"] = denoise_mask_function

    def set_model_patch(self, patch, name: str):
        to = self.model_options["transformer_options"]
        to.setdefault("patches", {})
        to["patches"][name] = to["patches"].get(name, []) + [patch]

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        self.model_options = set_model_options_patch_replace(self.model_options, patch, name, block_name, number,
                                                             transformer_index=transformer_index)

    def set_model_attn1_patch(self, patch):
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch):
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn1_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def set_model_attn1_output_patch(self, patch):
        self.set_model_patch(patch, "attn1_output_patch")

    def set_model_attn2_output_patch(self, patch):
        self.set_model_patch(patch, "attn2_output_patch")

    def set_model_input_block_patch(self, patch):
        self.set_model_patch(patch, "input_block_patch")

    def set_model_input_block_patch_after_skip(self, patch):
        self.set_model_patch(patch, "input_block_patch_after_skip")

    def set_model_output_block_patch(self, patch):
        self.set_model_patch(patch, "output_block_patch")

    def set_model_emb_patch(self, patch):
        self.set_model_patch(patch, "emb_patch")

    def set_model_forward_timestep_embed_patch(self, patch):
        self.set_model_patch(patch, "forward_timestep_embed_patch")

    def set_model_double_block_patch(self, patch):
        self.set_model_patch(patch, "double_block")

    def set_model_post_input_patch(self, patch):
        self.set_model_patch(patch, "post_input")

    def model_patches_to(self, device):
        """Move patch objects that can move (`.to`) along with the model (device or dtype)."""
        to = self.model_options["transformer_options"]
        for patch_list in to.get("patches", {}).values():
            for i, p in enumerate(patch_list):
                if hasattr(p, "to"):
                    patch_list[i] = p.to(device)
        for patch_dict in to.get("patches_replace", {}).values():
            for k, p in patch_dict.items():
                if hasattr(p, "to"):
                    patch_dict[k] = p.to(device)
        wrapper = self.model_options.get("model_function_wrapper")
        if hasattr(wrapper, "to"):
            self.model_options["model_function_wrapper"] = wrapper.to(device)

    def model_patches_models(self) -> list:
        """Other models the patches need loaded too (patch objects with `.models()`)."""
        to = self.model_options["transformer_options"]
        found = [p for pl in to.get("patches", {}).values() for p in pl]
        found += [p for pd in to.get("patches_replace", {}).values() for p in pd.values()]
        wrapper = self.model_options.get("model_function_wrapper")
        if wrapper is not None:
            found.append(wrapper)
        return [m for p in found if hasattr(p, "models") for m in p.models()]

    # -- object patches ------------------------------------------------------------------------

    def add_object_patch(self, name: str, obj):
        self.object_patches[name] = obj

    def set_model_compute_dtype(self, dtype):
        self.add_object_patch("manual_cast_dtype", dtype)
        if dtype is not None:
            self.force_cast_weights = True
        self.patches_uuid = uuid.uuid4()

    def add_weight_wrapper(self, name: str, function):
        self.weight_wrapper_patches[name] = self.weight_wrapper_patches.get(name, []) + [function]
        self.patches_uuid = uuid.uuid4()

    def get_model_object(self, name: str):
        """A (dotted) attribute of the model as this patcher sees it, object patches included."""
        if name in self.object_patches:
            return self.object_patches[name]
        if name in self.object_patches_backup:
            return self.object_patches_backup[name]
        return get_attr(self.model, name)

    # -- weight patches ------------------------------------------------------------------------

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        """Queue weight patches ({key or (key, offset[, function]): value}); keys the model does not
        have are skipped. Returns the keys taken."""
        model_keys = set(self.model.state_dict().keys())
        taken = []
        for k, value in patches.items():
            offset = function = None
            if isinstance(k, str):
                key = k
            else:
                key, offset = k[0], k[1]
                if len(k) > 2:
                    function = k[2]
            if key in model_keys:
                taken.append(k)
                self.patches.setdefault(key, []).append((strength_patch, value, strength_model, offset, function))
        self.patches_uuid = uuid.uuid4()
        return taken

    def get_key_patches(self, filter_prefix: str | None = None) -> dict:
        """{key: [(original weight, convert function), *patches]} for every state-dict key."""
        out = {}
        for k in self.model_state_dict():
            if filter_prefix is not None and not k.startswith(filter_prefix):
                continue
            # the unpatched weight even while LoRA or hook weights are on the shared network
            backup = self.backup.get(k)
            weight = backup.weight if backup is not None else self.hook_backup.get(k, get_attr(self.model, k))
            out[k] = [(weight, lambda a, **kwargs: a)] + self.patches.get(k, [])
        return out

    def model_state_dict(self, filter_prefix: str | None = None) -> dict:
        sd = self.model.state_dict()
        if filter_prefix is not None:
            sd = {k: v for k, v in sd.items() if k.startswith(filter_prefix)}
        return sd

    def patch_weight_to_device(self, key: str, device_to=None, inplace_update: bool = False) -> None:
        """Apply this patcher's patches for `key`, keeping the original in `backup` first."""
        if key not in self.patches:
            return
        weight = get_attr(self.model, key)
        inplace_update = self.weight_inplace_update or inplace_update
        if key not in self.backup:
            self.backup[key] = Backup(weight.to(device=self.offload_device, copy=inplace_update), inplace_update)
        with torch.no_grad():
            work = weight.detach().to(device=device_to or weight.device, dtype=torch.float32, copy=True)
            out = comfy_function("comfy.lora", "calculate_weight", calculate_weight)(self.patches[key], work, key)
            out = out.to(weight.dtype)
            if inplace_update:
                copy_to_param(self.model, key, out)
            else:
                set_attr_param(self.model, key, out)

    def _load_list(self) -> list:
        """(bytes, name, module, own parameter names) of every module holding parameters directly."""
        loading = []
        for n, m in self.model.named_modules():
            params = [name for name, _ in m.named_parameters(recurse=False)]
            if params:
                size = sum(p.nelement() * p.element_size() for p in m.parameters(recurse=False))
                loading.append((size, n, m, params))
        return loading

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        """Bring weights to `device_to` and apply the patches: everything when `full_load`, else the
        largest modules within `lowvram_model_memory` bytes, the rest cast per call."""
        device_to = torch.device(device_to) if device_to is not None else self.load_device
        self.unpatch_hooks()
        loading = sorted(self._load_list(), key=lambda x: (x[0], x[1]), reverse=True)
        mem, patch_counter, lowvram_counter = 0, 0, 0
        with torch.no_grad():
            for size, n, m, params in loading:
                lowvram = not full_load and mem + size >= lowvram_model_memory
                if lowvram:
                    lowvram_counter += 1
                    if getattr(m, "_lg_cast", None) is not None:
                        continue
                    functions: dict[str, list] = {}
                    for param in params:
                        key = f"{n}.{param}" if n else param
                        if key in self.patches:
                            if force_patch_weights:
                                self.patch_weight_to_device(key)
                            else:
                                functions.setdefault(param, []).append(LowVramPatch(key, self.patches))
                                patch_counter += 1
                        functions.setdefault(param, []).extend(self.weight_wrapper_patches.get(key, []))
                    _cast_per_call(m, device_to, functions)
                    continue
                mem += size
                _stop_casting(m)
                if not getattr(m, "comfy_patched_weights", False):
                    for param in params:
                        self.patch_weight_to_device(f"{n}.{param}" if n else param, device_to=device_to)
                    m.comfy_patched_weights = True
                _own_to(m, device_to)
        if lowvram_counter:
            log.info("loaded partially: %.1f MB of weights on %s, %d modules cast per call",
                     mem / 2 ** 20, device_to, lowvram_counter)
            self.model.model_lowvram = True
        else:
            self.model.model_lowvram = False
            if full_load:
                self.model.to(device_to)
                mem = self.model_size()
        self.model.lowvram_patch_counter += patch_counter
        self.model.device = device_to
        self.model.model_loaded_weight_memory = mem
        self.model.current_weight_patches_uuid = self.patches_uuid
        for callback in self.get_all_callbacks(pe.CallbacksMP.ON_LOAD):
            callback(self, device_to, lowvram_model_memory, force_patch_weights, full_load)
        self.apply_hooks(self.forced_hooks, force_apply=True)

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        for k, obj in self.object_patches.items():
            old = set_attr(self.model, k, obj)
            if k not in self.object_patches_backup:
                self.object_patches_backup[k] = old
        if load_weights:
            self.load(device_to, lowvram_model_memory=lowvram_model_memory, force_patch_weights=force_patch_weights,
                      full_load=lowvram_model_memory == 0)
        self.inject_model()
        return self.model

    def unpatch_model(self, device_to=None, unpatch_weights: bool = True):
        self.eject_model()
        if unpatch_weights:
            self.unpatch_hooks()
            for m in self.model.modules():
                _stop_casting(m)
                if hasattr(m, "comfy_patched_weights"):
                    del m.comfy_patched_weights
            self.model.model_lowvram = False
            self.model.lowvram_patch_counter = 0
            for k, backup in list(self.backup.items()):
                if backup.inplace_update:
                    copy_to_param(self.model, k, backup.weight)
                else:
                    set_attr_param(self.model, k, backup.weight)
            self.model.current_weight_patches_uuid = None
            self.backup.clear()
            if device_to is not None:
                self.model.to(device_to)
                self.model.device = device_to
            self.model.model_loaded_weight_memory = 0
        for k, old in list(self.object_patches_backup.items()):
            set_attr(self.model, k, old)
        self.object_patches_backup.clear()

    def partially_unload(self, device_to, memory_to_free: int = 0) -> int:
        """Move the smallest loaded modules back to `device_to` (cast per call from then on) until
        `memory_to_free` bytes are freed; their weights go back to the originals."""
        freed = 0
        device_to = torch.device(device_to)
        with torch.no_grad():
            for size, n, m, params in sorted(self._load_list(), key=lambda x: (x[0], x[1])):
                if freed >= memory_to_free:
                    break
                if getattr(m, "_lg_cast", None) is not None:
                    continue
                functions: dict[str, list] = {}
                for param in params:
                    key = f"{n}.{param}" if n else param
                    backup = self.backup.pop(key, None)
                    if backup is not None:
                        set_attr_param(self.model, key, backup.weight)
                    if key in self.patches:
                        functions.setdefault(param, []).append(LowVramPatch(key, self.patches))
                _own_to(m, device_to)
                _cast_per_call(m, self.load_device, functions)
                m.comfy_patched_weights = False
                freed += size
        self.model.model_lowvram = True
        self.model.model_loaded_weight_memory -= freed
        return freed

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False) -> int:
        """Make this patcher the loaded one: re-patch if the model holds another patch set, then
        load weights into `extra_memory` more bytes. Returns the bytes newly loaded."""
        stale = (self.model.current_weight_patches_uuid is not None
                 and (self.model.current_weight_patches_uuid != self.patches_uuid or force_patch_weights))
        used = self.model.model_loaded_weight_memory
        self.unpatch_model(self.offload_device if stale else None, unpatch_weights=stale)
        if stale:
            extra_memory += used - self.model.model_loaded_weight_memory
        self.patch_model(load_weights=False)
        if not self.model.model_lowvram and self.model.model_loaded_weight_memory > 0:
            self.apply_hooks(self.forced_hooks, force_apply=True)
            return 0
        current = self.model.model_loaded_weight_memory
        full_load = current + extra_memory > self.model_size()
        try:
            self.load(device_to, lowvram_model_memory=current + extra_memory,
                      force_patch_weights=force_patch_weights, full_load=full_load)
        except Exception:
            self.detach()
            raise
        return self.model.model_loaded_weight_memory - current

    def detach(self, unpatch_all: bool = True):
        self.eject_model()
        self.model_patches_to(self.offload_device)
        if unpatch_all:
            self.unpatch_model(self.offload_device, unpatch_weights=unpatch_all)
        for callback in self.get_all_callbacks(pe.CallbacksMP.ON_DETACH):
            callback(self, unpatch_all)
        return self.model

    def current_loaded_device(self):
        return self.model.device

    def calculate_weight(self, patches, weight, key, intermediate_dtype=torch.float32):
        return comfy_function("comfy.lora", "calculate_weight", calculate_weight)(
            patches, weight, key, intermediate_dtype=intermediate_dtype)

    def cleanup(self):
        self.clean_hooks()
        if hasattr(self.model, "current_patcher"):
            self.model.current_patcher = None
        for callback in self.get_all_callbacks(pe.CallbacksMP.ON_CLEANUP):
            callback(self)

    # -- wrappers, callbacks, attachments ------------------------------------------------------

    def add_callback(self, call_type: str, callback: Callable):
        self.add_callback_with_key(call_type, None, callback)

    def add_callback_with_key(self, call_type: str, key, callback: Callable):
        self.callbacks.setdefault(call_type, {}).setdefault(key, []).append(callback)

    def remove_callbacks_with_key(self, call_type: str, key):
        self.callbacks.get(call_type, {}).pop(key, None)

    def get_callbacks(self, call_type: str, key) -> list:
        return self.callbacks.get(call_type, {}).get(key, [])

    def get_all_callbacks(self, call_type: str) -> list:
        return [c for group in self.callbacks.get(call_type, {}).values() for c in group]

    def add_wrapper(self, wrapper_type: str, wrapper: Callable):
        self.add_wrapper_with_key(wrapper_type, None, wrapper)

    def add_wrapper_with_key(self, wrapper_type: str, key, wrapper: Callable):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def remove_wrappers_with_key(self, wrapper_type: str, key):
        self.wrappers.get(wrapper_type, {}).pop(key, None)

    def get_wrappers(self, wrapper_type: str, key) -> list:
        return self.wrappers.get(wrapper_type, {}).get(key, [])

    def get_all_wrappers(self, wrapper_type: str) -> list:
        return [w for group in self.wrappers.get(wrapper_type, {}).values() for w in group]

    def set_attachments(self, key: str, attachment):
        self.attachments[key] = attachment

    def remove_attachments(self, key: str):
        self.attachments.pop(key, None)

    def get_attachment(self, key: str):
        return self.attachments.get(key)

    def set_injections(self, key: str, injections: list):
        self.injections[key] = injections

    def remove_injections(self, key: str):
        self.injections.pop(key, None)

    def get_injections(self, key: str):
        return self.injections.get(key)

    def set_additional_models(self, key: str, models: list):
        self.additional_models[key] = models

    def remove_additional_models(self, key: str):
        self.additional_models.pop(key, None)

    def get_additional_models_with_key(self, key: str) -> list:
        return self.additional_models.get(key, [])

    def get_additional_models(self) -> list:
        return [m for models in self.additional_models.values() for m in models]

    def get_nested_additional_models(self) -> list:
        seen, out, todo = set(), [], list(self.get_additional_models())
        while todo:
            m = todo.pop(0)
            if id(m) in seen:
                continue
            seen.add(id(m))
            out.append(m)
            todo.extend(m.get_additional_models())
        return out

    def use_ejected(self, skip_and_inject_on_exit_only=False):
        import contextlib
        return contextlib.nullcontext()

    def inject_model(self):
        if self.is_injected or self.skip_injection:
            return
        for injections in self.injections.values():
            for inj in injections:
                inj.inject(self)
                self.is_injected = True
        if self.is_injected:
            for callback in self.get_all_callbacks(pe.CallbacksMP.ON_INJECT_MODEL):
                callback(self)

    def eject_model(self):
        if not self.is_injected:
            return
        for injections in self.injections.values():
            for inj in injections:
                inj.eject(self)
        self.is_injected = False
        for callback in self.get_all_callbacks(pe.CallbacksMP.ON_EJECT_MODEL):
            callback(self)

    # -- sampling lifecycle and hooks ----------------------------------------------------------

    def pre_run(self):
        if hasattr(self.model, "current_patcher"):
            self.model.current_patcher = self
        for callback in self.get_all_callbacks(pe.CallbacksMP.ON_PRE_RUN):
            callback(self)

    def prepare_state(self, timestep):
        for callback in self.get_all_callbacks(pe.CallbacksMP.ON_PREPARE_STATE):
            callback(self, timestep)

    # Hooks (diffusion.hooks): weight patches only some conditioning entries see. A hook's patches
    # are registered per hook (`hook_patches`, by hook_ref); `patch_hooks(group)` puts the group's
    # combined patches, at each hook's current keyframe strength, on top of the loaded weights,
    # keeping what it replaced in `hook_backup` (shared by clones, like `backup`). With hook_mode
    # MaxSpeed the computed weights are kept per group in `cached_hook_patches`, so switching
    # between groups every step does not recompute them.

    def restore_hook_patches(self):
        if self.hook_patches_backup is not None:
            self.hook_patches = self.hook_patches_backup
            self.hook_patches_backup = None

    def set_hook_mode(self, hook_mode):
        self.hook_mode = hook_mode

    def prepare_hook_patches_current_keyframe(self, t, hook_group, model_options: dict):
        """Advance the group's keyframes to sigma t[0]; weights computed for a changed strength
        are dropped (and taken off the model if they are on it)."""
        reset_current = False
        transformer_options = model_options.get("transformer_options", {})
        for hook in hook_group.hooks:
            if not hook.hook_keyframe.prepare_current_keyframe(curr_t=t[0], transformer_options=transformer_options):
                continue
            if self.current_hooks is not None and any(h == hook for h in self.current_hooks.hooks):
                reset_current = True
            for cached in [g for g in self.cached_hook_patches if g.contains(hook)]:
                self.cached_hook_patches.pop(cached)
        if reset_current:
            self.patch_hooks(None)

    def register_all_hook_patches(self, hooks, target_dict, model_options=None, registered=None):
        """Register the weight hooks of `hooks` not registered yet (the previous registrations are
        kept for restore_hook_patches); returns the group of registered hooks."""
        from .hooks import EnumHookType, HookGroup
        self.restore_hook_patches()
        registered = HookGroup() if registered is None else registered
        new = []
        for hook in hooks.get_type(EnumHookType.Weight):
            if hook.hook_ref in self.hook_patches:
                registered.add(hook)
            else:
                new.append(hook)
        if new:
            self.hook_patches_backup = {ref: {k: list(v) for k, v in p.items()} for ref, p in self.hook_patches.items()}
            for hook in new:
                hook.add_hook_patches(self, model_options, target_dict, registered)
        for callback in self.get_all_callbacks(pe.CallbacksMP.ON_REGISTER_ALL_HOOK_PATCHES):
            callback(self, hooks, target_dict, model_options, registered)
        return registered

    def add_hook_patches(self, hook, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        """Weight patches of one hook, as add_patches takes them; keys the model lacks are skipped."""
        model_keys = set(self.model.state_dict().keys())
        mine = self.hook_patches.get(hook.hook_ref, {})
        taken = []
        for k, value in patches.items():
            key, offset, function = (k, None, None) if isinstance(k, str) else \
                (k[0], k[1], k[2] if len(k) > 2 else None)
            if key in model_keys:
                taken.append(k)
                mine.setdefault(key, []).append((strength_patch, value, strength_model, offset, function))
        self.hook_patches[hook.hook_ref] = mine
        self.patches_uuid = uuid.uuid4()
        return taken

    def get_combined_hook_patches(self, hooks) -> dict:
        """{key: patches} of every hook in the group, each scaled by its current keyframe strength."""
        combined: dict[str, list] = {}
        for hook in (hooks.hooks if hooks is not None else []):
            scale = hook.strength
            for key, patches in self.hook_patches.get(hook.hook_ref, {}).items():
                if math.isclose(scale, 1.0):
                    combined.setdefault(key, []).extend(patches)
                else:
                    combined.setdefault(key, []).extend((p[0] * scale, *p[1:]) for p in patches)
        return combined

    def apply_hooks(self, hooks=None, transformer_options: dict | None = None, force_apply=False) -> dict:
        """Make `hooks` the group on the model (a CLIP re-applies its forced hooks on every load);
        returns the group's transformer options."""
        from .hooks import create_transformer_options_from_hooks
        if self.current_hooks is hooks and (not force_apply or (not self.is_clip and hooks is None)):
            return create_transformer_options_from_hooks(self, hooks, transformer_options)
        self.patch_hooks(hooks)
        for callback in self.get_all_callbacks(pe.CallbacksMP.ON_APPLY_HOOKS):
            callback(self, hooks)
        return create_transformer_options_from_hooks(self, hooks, transformer_options)

    def patch_hooks(self, hooks) -> None:
        if hooks is None:
            self.unpatch_hooks()
            self.current_hooks = None
            return
        cached = self.cached_hook_patches.get(hooks)
        if cached is not None:
            self.unpatch_hooks({k for k in self.hook_backup if k not in cached})
            for key in cached:
                self.patch_cached_hook_weights(cached, key)
        else:
            self.unpatch_hooks()
            combined = self.get_combined_hook_patches(hooks)
            originals = self.get_key_patches() if combined else None
            for key in combined:
                self.patch_hook_weight_to_device(hooks, combined, key, originals)
        self.current_hooks = hooks

    def patch_cached_hook_weights(self, cached_weights: dict, key: str, memory_counter=None) -> None:
        self._set_hook_weight(key, cached_weights[key])

    def patch_hook_weight_to_device(self, hooks, combined_patches: dict, key: str, original_weights: dict,
                                    memory_counter=None) -> None:
        """Put `key`'s loaded weight (regular patches already in it) plus the group's patches on the
        model, kept for the group in MaxSpeed mode; "model_as_lora" patches measure against the
        weight before any patch (`original_weights`, get_key_patches' form)."""
        if key not in combined_patches:
            return
        weight = get_attr(self.model, key)
        with torch.no_grad():
            work = weight.detach().to(dtype=torch.float32, copy=True)
            out = comfy_function("comfy.lora", "calculate_weight", calculate_weight)(
                combined_patches[key], work, key, original_weights=original_weights).to(weight.dtype)
        self._set_hook_weight(key, out)
        if self.hook_mode == EnumHookMode.MaxSpeed:
            self.cached_hook_patches.setdefault(hooks, {})[key] = out

    def _set_hook_weight(self, key: str, value: torch.Tensor) -> None:
        """Replace the tensor (never write into it: it may map the checkpoint file), keeping the
        one it replaces until unpatch_hooks."""
        current = get_attr(self.model, key)
        self.hook_backup.setdefault(key, current)
        set_attr_param(self.model, key, value.to(current.device))

    def unpatch_hooks(self, whitelist_keys_set=None) -> None:
        """Put back the weights hooks replaced (only those in `whitelist_keys_set` when given)."""
        if not self.hook_backup:
            self.current_hooks = None
            return
        for key in list(self.hook_backup):
            if whitelist_keys_set and key not in whitelist_keys_set:
                continue
            original = self.hook_backup.pop(key)
            set_attr_param(self.model, key, original.to(get_attr(self.model, key).device))
        if not whitelist_keys_set:
            self.current_hooks = None

    def clear_cached_hook_weights(self):
        self.cached_hook_patches.clear()
        self.patch_hooks(None)

    def clean_hooks(self):
        self.unpatch_hooks()
        self.clear_cached_hook_weights()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.model).__name__}, {len(self.patches)} patched weights, "
                f"load_device={self.load_device})")


__all__ = ["Backup", "LowVramPatch", "ModelPatcher", "copy_to_param", "create_model_options_clone", "get_attr",
           "module_size", "set_attr", "set_attr_param", "set_model_options_patch_replace",
           "set_model_options_post_cfg_function", "set_model_options_pre_cfg_function", "string_to_seed"]
