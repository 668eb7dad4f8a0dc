"""LoRA training on a diffusion model, as ComfyUI's Train LoRA node does it.

What is trained (ComfyUI's `TrainLoraNode`): every weight of the UNet, each through the cheapest
adapter its shape allows,

* matrices and convolution kernels: the chosen algorithm's factors (`ALGORITHMS`: LoRA's
  low-rank pair W' = W + (alpha / r) * up @ down, LoHa's Hadamard product of two pairs, LoKr's
  Kronecker product, OFT's block rotations of the output rows), one factor starting at zero (OFT:
  the identity rotation) so training starts from the unchanged model (alpha = 1);
* one-dimensional weights (GroupNorm, LayerNorm scales): a full difference W' = W + diff;
* biases: a full difference b' = b + diff_b;

and the base weights stay frozen. One step (ComfyUI's `TrainSampler`): pick `batch_size` images
at random, noise each to a sigma drawn uniformly in sampling percent (`percent_to_sigma`), ask the
model for its denoised estimate through the same `denoise` a sampler calls, and regress that on
the clean latent with the chosen loss; the optimizer steps every `grad_accumulation_steps`
batches. The noise of step i comes from seed + 1000 i as in ComfyUI; everything else random
(adapter init, image choice, sigmas) from one generator seeded with `seed`, so a run is
reproducible for its seed.

The adapters are installed by replacing the forward of each adapted module for the duration of
training (`installed`), so nothing in the shared, cached network changes and gradient
checkpointing can re-run a block with the same adapters. `kohya_state_dict` writes the result
under kohya's names (`lora_unet_<module path with _>` + the algorithm's suffixes, e.g.
`.lora_up.weight` / `.lora_down.weight`, `.hada_w1_a` ..., `.lokr_w1` / `.lokr_w2`, `.oft_blocks`,
and `.alpha`, `.diff`, `.diff_b`), which LatentGraph's and ComfyUI's LoRA loaders both read.
"""
from __future__ import annotations

import abc
import contextlib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffusion import lora as lora_maps
from diffusion.ksampler import convert_cond, encode_model_conds
from diffusion.model_management import load_models_gpu
from diffusion.noise import prepare_noise
from diffusion.patches import LoHaAdapter, LoKrAdapter, LoRAAdapter, OFTAdapter, oft_rotate, oft_rotation
from diffusion.training.loop import autocast, elementwise_loss

OPTIMIZERS = ("AdamW", "Adam", "SGD", "RMSprop")
LOSSES = {"MSE": "mse", "L1": "l1", "Huber": "huber", "SmoothL1": "smooth_l1"}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
KOHYA_PREFIX = "lora_unet_"
_ADAPTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.LayerNorm)


@dataclass
class LoraSettings:
    """TrainLoraNode's options (and the train command's)."""

    steps: int = 16
    batch_size: int = 1
    grad_accumulation_steps: int = 1
    learning_rate: float = 0.0005
    rank: int = 8
    optimizer: str = "AdamW"
    loss_function: str = "MSE"
    seed: int = 0
    training_dtype: str = "bf16"
    lora_dtype: str = "bf16"
    gradient_checkpointing: bool = True
    algorithm: str = "LoRA"

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {self.algorithm!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.loss_function not in LOSSES:
            raise ValueError(f"loss_function must be one of {', '.join(LOSSES)}, not {self.loss_function!r}")
        for name in ("training_dtype", "lora_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be bf16 or fp32, not {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "grad_accumulation_steps", "rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


# --- the adapters ---------------------------------------------------------------------------

class ModuleAdapter(nn.Module, abc.ABC):
    """The trainable difference for one module's weight (and bias). One-dimensional weights get a
    full difference whatever the algorithm; matrices and kernels get the algorithm's factors,
    which a subclass defines (`_init_factors`, `_patch_matrix`, `factor_tensors`, `_load_factors`)
    with its loader's patch class (`patch_type`)."""

    algorithm = ""
    patch_type: type = type(None)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rank: int, dtype: torch.dtype,
                 generator: torch.Generator):
        super().__init__()
        self.shape = tuple(weight.shape)
        self.alpha = 1.0   # ComfyUI's trainer creates every adapter with alpha 1
        if weight.ndim >= 2:
            self.diff = None
            self._init_factors(rank, dtype, generator)
        else:
            self.diff = nn.Parameter(torch.zeros(self.shape, dtype=dtype))
        self.diff_b = None if bias is None else nn.Parameter(torch.zeros(bias.shape, dtype=dtype))

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return math.prod(self.shape[1:])

    @abc.abstractmethod
    def _init_factors(self, rank: int, dtype: torch.dtype, generator: torch.Generator) -> None:
        ...

    @abc.abstractmethod
    def _patch_matrix(self, weight: torch.Tensor) -> torch.Tensor:
        ...

    @abc.abstractmethod
    def factor_tensors(self) -> dict[str, torch.Tensor]:
        """The factors under the file's key suffixes (without alpha), in the file's layout."""

    @abc.abstractmethod
    def _load_factors(self, patch, dtype: torch.dtype) -> None:
        ...

    def patch_weight(self, weight: torch.Tensor) -> torch.Tensor:
        if self.diff is not None:
            return weight + self.diff.to(weight.dtype)
        return self._patch_matrix(weight)

    def patch_bias(self, bias: torch.Tensor | None) -> torch.Tensor | None:
        if bias is None or self.diff_b is None:
            return bias
        return bias + self.diff_b.to(bias.dtype)

    @torch.no_grad()
    def load_from(self, found: Mapping[str, object]) -> None:
        """Start from a saved file's values for this module ("weight": this algorithm's patch or a
        ("diff", (tensor,)) patch, "bias": a diff patch), keeping the saved shapes and alpha."""
        weight, bias = found.get("weight"), found.get("bias")
        dtype = next(self.parameters()).dtype
        if isinstance(weight, self.patch_type) and self.diff is None:
            self._load_factors(weight, dtype)
        elif _is_diff(weight) and self.diff is not None:
            self.diff.copy_(weight[1][0].reshape(self.shape).to(dtype))
        elif weight is not None:
            raise ValueError(f"a {type(weight).__name__} patch cannot be trained further as {self.algorithm}")
        if _is_diff(bias) and self.diff_b is not None:
            self.diff_b.copy_(bias[1][0].reshape(self.diff_b.shape).to(dtype))


def _param(t: torch.Tensor, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(t.to(dtype).clone())


class LoraModuleAdapter(ModuleAdapter):
    """W' = W + (alpha / r) up @ down; up Kaiming-uniform, down zero."""

    algorithm = "LoRA"
    patch_type = LoRAAdapter

    def _init_factors(self, rank, dtype, generator):
        up = torch.empty(self.out_features, rank)
        nn.init.kaiming_uniform_(up, a=math.sqrt(5), generator=generator)
        self.up = _param(up, dtype)
        self.down = nn.Parameter(torch.zeros(rank, self.in_features, dtype=dtype))

    def _patch_matrix(self, weight):
        rank = self.down.shape[0]
        delta = (self.up.float() @ self.down.float()) * (self.alpha / rank)
        return weight + delta.reshape(self.shape).to(weight.dtype)

    def factor_tensors(self):
        up, down = self.up, self.down
        if len(self.shape) > 2:   # kohya's conv layout: [out, r, 1, 1] and [r, in, kh, kw]
            up = up.reshape(up.shape[0], up.shape[1], *([1] * (len(self.shape) - 2)))
            down = down.reshape(down.shape[0], *self.shape[1:])
        return {"lora_up.weight": up, "lora_down.weight": down}

    def _load_factors(self, patch, dtype):
        up, down, alpha, mid, dora, reshape = patch.weights
        if mid is not None or dora is not None or reshape is not None:
            raise ValueError("only plain LoRA pairs can be trained further (this one has a Tucker mid, "
                             "DoRA scale or reshape)")
        self.up = _param(up.reshape(up.shape[0], -1), dtype)
        self.down = _param(down.reshape(down.shape[0], -1), dtype)
        self.alpha = float(alpha) if alpha is not None else float(down.shape[0])


class LohaModuleAdapter(ModuleAdapter):
    """W' = W + (alpha / r) (w1a @ w1b) * (w2a @ w2b), a Hadamard product of two rank-r products;
    as ComfyUI creates them: w1a ~ N(0.1, 1), w1b = 0, w2a ~ N(0.1, 1), w2b ~ N(0.01, 1)."""

    algorithm = "LoHa"
    patch_type = LoHaAdapter

    def _init_factors(self, rank, dtype, generator):
        out_f, in_f = self.out_features, self.in_features
        self.w1a = _param(torch.randn(out_f, rank, generator=generator) + 0.1, dtype)
        self.w1b = nn.Parameter(torch.zeros(rank, in_f, dtype=dtype))
        self.w2a = _param(torch.randn(out_f, rank, generator=generator) + 0.1, dtype)
        self.w2b = _param(torch.randn(rank, in_f, generator=generator) + 0.01, dtype)

    def _patch_matrix(self, weight):
        rank = self.w1b.shape[0]
        delta = (self.w1a.float() @ self.w1b.float()) * (self.w2a.float() @ self.w2b.float()) * (self.alpha / rank)
        return weight + delta.reshape(self.shape).to(weight.dtype)

    def factor_tensors(self):
        return {"hada_w1_a": self.w1a, "hada_w1_b": self.w1b, "hada_w2_a": self.w2a, "hada_w2_b": self.w2b}

    def _load_factors(self, patch, dtype):
        w1a, w1b, alpha, w2a, w2b, t1, t2, dora = patch.weights
        if t1 is not None or dora is not None:
            raise ValueError("only plain LoHa factors can be trained further (this one has Tucker cores or a DoRA "
                             "scale)")
        self.w1a, self.w1b = _param(w1a, dtype), _param(w1b.reshape(w1b.shape[0], -1), dtype)
        self.w2a, self.w2b = _param(w2a, dtype), _param(w2b.reshape(w2b.shape[0], -1), dtype)
        self.alpha = float(alpha) if alpha is not None else float(w1b.shape[0])


def factorization(dimension: int, factor: int) -> tuple[int, int]:
    """dimension = m * n with m <= n, as LyCORIS (and ComfyUI) split it for LoKr factors and OFT
    blocks: m = factor when it divides and m * m fits, else the most balanced split with m <= factor."""
    if factor > 0 and dimension % factor == 0 and dimension >= factor * factor:
        m, n = factor, dimension // factor
        return (n, m) if m > n else (m, n)
    factor = dimension if factor < 0 else factor
    m, n = 1, dimension
    while m < n:
        bigger = m + 1
        while dimension % bigger:
            bigger += 1
        if bigger + dimension // bigger > m + n or bigger > factor:
            break
        m, n = bigger, dimension // bigger
    return (n, m) if m > n else (m, n)


class LokrModuleAdapter(ModuleAdapter):
    """W' = W + kron(w1, w2), whole factors [o1, i1] and [o2, i2] with out = o1 o2, in = i1 i2 split by
    `factorization` around the rank; w1 zero, w2 Kaiming-uniform (alpha does not scale whole factors)."""

    algorithm = "LoKr"
    patch_type = LoKrAdapter

    def _init_factors(self, rank, dtype, generator):
        (o1, o2), (i1, i2) = factorization(self.out_features, rank), factorization(self.in_features, rank)
        w2 = torch.empty(o2, i2)
        nn.init.kaiming_uniform_(w2, a=math.sqrt(5), generator=generator)
        self.w1 = nn.Parameter(torch.zeros(o1, i1, dtype=dtype))
        self.w2 = _param(w2, dtype)

    def _patch_matrix(self, weight):
        return weight + torch.kron(self.w1.float(), self.w2.float()).reshape(self.shape).to(weight.dtype)

    def factor_tensors(self):
        return {"lokr_w1": self.w1, "lokr_w2": self.w2}

    def _load_factors(self, patch, dtype):
        w1, w2, alpha, *factored, dora = patch.weights
        if w1 is None or w2 is None or w2.ndim != 2 or dora is not None:
            raise ValueError("only LoKr files with whole 2-D lokr_w1 / lokr_w2 can be trained further")
        self.w1, self.w2 = _param(w1, dtype), _param(w2, dtype)
        self.alpha = float(alpha) if alpha is not None else 1.0


class OftModuleAdapter(ModuleAdapter):
    """W' = R W: the output rows in k blocks of b (b * k = out, split by `factorization` around the
    rank), each block rotated by the Cayley transform R = (I + Q)(I - Q)^-1 of Q = B - B^T, with
    Q's norm capped at alpha; the blocks B start at zero (R = I)."""

    algorithm = "OFT"
    patch_type = OFTAdapter

    def _init_factors(self, rank, dtype, generator):
        size, number = factorization(self.out_features, rank)
        self.blocks = nn.Parameter(torch.zeros(number, size, size, dtype=dtype))

    def _patch_matrix(self, weight):
        return oft_rotate(oft_rotation(self.blocks, self.alpha), weight.float()).to(weight.dtype)

    def factor_tensors(self):
        return {"oft_blocks": self.blocks}

    def _load_factors(self, patch, dtype):
        blocks, rescale, alpha, dora = patch.weights
        if rescale is not None or dora is not None:
            raise ValueError("only OFT files without rescale or DoRA scale can be trained further")
        self.blocks = _param(blocks, dtype)
        self.alpha = float(alpha) if alpha is not None else 0.0


ALGORITHMS: dict[str, type[ModuleAdapter]] = {
    cls.algorithm: cls for cls in (LoraModuleAdapter, LohaModuleAdapter, LokrModuleAdapter, OftModuleAdapter)}


def _is_diff(patch) -> bool:
    return isinstance(patch, tuple) and len(patch) == 2 and patch[0] == "diff"


def adapted_modules(network: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, module) of every module whose weight gets an adapter, in module order."""
    for name, module in network.named_modules():
        if isinstance(module, _ADAPTED) and isinstance(getattr(module, "weight", None), torch.Tensor):
            yield name, module


def kohya_name(path: str) -> str:
    return KOHYA_PREFIX + path.replace(".", "_")


class LoraSet(nn.Module):
    """Adapters for every adaptable module of a network, keyed by kohya module name."""

    def __init__(self, network: nn.Module, rank: int, dtype: torch.dtype, generator: torch.Generator,
                 algorithm: str = "LoRA"):
        super().__init__()
        self.paths: dict[str, str] = {}
        self.adapters = nn.ModuleDict()
        self.rank, self.dtype, self.generator = rank, dtype, generator
        for path, module in adapted_modules(network):
            name = kohya_name(path)
            self.paths[name] = path
            self.adapters[name] = ALGORITHMS[algorithm](module.weight, module.bias, rank, dtype, generator)

    def use_algorithm(self, network: nn.Module, name: str, algorithm: str) -> ModuleAdapter:
        """Module `name`'s adapter, made anew with `algorithm` where it has another."""
        if self.adapters[name].algorithm != algorithm:
            module = network.get_submodule(self.paths[name])
            self.adapters[name] = ALGORITHMS[algorithm](module.weight, module.bias, self.rank, self.dtype,
                                                        self.generator)
        return self.adapters[name]

    def load_existing(self, network: nn.Module, lora_sd: Mapping[str, torch.Tensor]) -> int:
        """Initialise from a LoRA file in any layout the LoRA loader reads; returns how many
        modules it covered. As in ComfyUI, a module keeps the algorithm the file trained it with.
        Keys that patch nothing of this network are an error."""
        to_load = {name: target.key for name, target in lora_maps.unet_key_map(network).items()}
        patches, unused = lora_maps.read_lora(lora_sd, to_load)
        shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
        unknown = [k for k in patches if k not in shapes]
        if unused or unknown:
            bad = (unused + unknown)[:5]
            raise ValueError(f"the existing LoRA does not fit this model: {len(unused) + len(unknown)} key(s) patch "
                             f"nothing in it, e.g. {', '.join(bad)}")
        per_module: dict[str, dict[str, object]] = {}
        for key, patch in patches.items():
            path, kind = key.rsplit(".", 1)
            per_module.setdefault(kohya_name(path), {})[kind] = patch
        for name, items in per_module.items():
            kind = next((cls.algorithm for cls in ALGORITHMS.values() if isinstance(items.get("weight"), cls.patch_type)),
                        self.adapters[name].algorithm)
            self.use_algorithm(network, name, kind).load_from(items)
        return len(per_module)

    def kohya_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The trained differences under kohya's module names, each algorithm's factors under the
        suffixes ComfyUI's loader reads (`factor_tensors`), with `.alpha`."""
        out: dict[str, torch.Tensor] = {}
        for name, a in self.adapters.items():
            cast = (lambda t: t.detach().to(dtype or t.dtype).contiguous())
            if a.diff is not None:
                out[f"{name}.diff"] = cast(a.diff)
            else:
                factors = a.factor_tensors()
                out.update({f"{name}.{suffix}": cast(t) for suffix, t in factors.items()})
                out[f"{name}.alpha"] = torch.tensor(a.alpha, dtype=dtype or next(iter(factors.values())).dtype)
            if a.diff_b is not None:
                out[f"{name}.diff_b"] = cast(a.diff_b)
        return out

    @contextlib.contextmanager
    def installed(self, network: nn.Module) -> Iterator[None]:
        """Run `network` with the adapters added to its weights (forwards replaced, then restored)."""
        replaced = []
        try:
            for name, path in self.paths.items():
                module = network.get_submodule(path)
                module.forward = _adapted_forward(module, self.adapters[name])
                replaced.append(module)
            yield
        finally:
            for module in replaced:
                module.__dict__.pop("forward", None)


def _adapted_forward(module: nn.Module, adapter: ModuleAdapter) -> Callable:
    def weights():
        return adapter.patch_weight(module.weight), adapter.patch_bias(module.bias)

    if isinstance(module, nn.Linear):
        return lambda x: F.linear(x, *weights())
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return lambda x: module._conv_forward(x, *weights())
    if isinstance(module, nn.GroupNorm):
        return lambda x: F.group_norm(x, module.num_groups, *weights(), module.eps)
    return lambda x: F.layer_norm(x, module.normalized_shape, *weights(), module.eps)


_CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)


def checkpoint_units(network: nn.Module) -> list[nn.Module]:
    """The outermost modules below `network` that are not plain containers (ComfyUI checkpoints
    the same set: each ResBlock, transformer, resampler and loose layer)."""
    found = []
    for child in network.children():
        if isinstance(child, _CONTAINERS):
            found += checkpoint_units(child)
        else:
            found.append(child)
    return found


@contextlib.contextmanager
def gradient_checkpointing(network: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Recompute each unit's activations in the backward pass instead of keeping them."""
    units = checkpoint_units(network) if enabled else []
    # A unit may already run an adapter's forward (a loose layer): that is what gets checkpointed,
    # and what is put back afterwards.
    before = [unit.__dict__.get("forward") for unit in units]
    try:
        for unit in units:
            inner = unit.forward

            def run(*args, _inner=inner, **kwargs):
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            unit.forward = run
        yield
    finally:
        for unit, forward in zip(units, before):
            if forward is None:
                unit.__dict__.pop("forward", None)
            else:
                unit.forward = forward


# --- the training loop -------------------------------------------------------------------------

def _batch_conds(conds: list[dict]) -> dict:
    """Per-image model inputs (ComfyUI's COND objects) joined on the batch axis by their own rules
    (cross-attention contexts of different lengths repeat to a common multiple)."""
    return {key: conds[0][key].concat([c[key] for c in conds[1:]]) for key in conds[0]}


def _optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    return {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam, "SGD": torch.optim.SGD,
            "RMSprop": torch.optim.RMSprop}[name](params, lr=lr)


StepHook = Callable[[int, int, float, torch.Tensor], None]


class LoraTrainer:
    """Trains a `LoraSet` on a MODEL's UNet for images given as latents and conditioning.

    `model` is a MODEL (ModelPatcher); its own weight patches (a LoRA loaded before) are applied
    while training, the new adapters on top. `latents` are VAE latents [N, C, h, w] (unscaled, as
    LATENT carries them); `positive` is CONDITIONING with one entry for all images or one per
    image. The trainer can be stepped, saved (`state_dict`) and resumed; `losses` holds one value
    per batch.
    """

    def __init__(self, model, latents: torch.Tensor, positive: list, settings: LoraSettings,
                 existing: Mapping[str, torch.Tensor] | None = None):
        self.settings = settings
        self.patcher = model.clone()
        self._load()
        self.base = self.patcher.model                      # the DiffusionModel
        self.network: nn.Module = self.base.diffusion_model
        self.model_sampling = self.patcher.get_model_object("model_sampling")
        self.device = self.patcher.load_device
        self.compute_dtype = DTYPES[settings.training_dtype]
        n = latents.shape[0]
        if len(positive) == 1 and n > 1:
            positive = positive * n
        elif len(positive) != n:
            raise ValueError(f"number of positive conditions ({len(positive)}) does not match number of images ({n})")
        with torch.inference_mode(False):
            # Clones are ordinary tensors: tensors made under inference mode cannot be saved for backward.
            self.latents = self.base.process_latent_in(latents.float().clone()).to(self.device)
            self.conds = [self._model_cond(entry, self.latents[i:i + 1]) for i, entry in enumerate(positive)]
            self.generator = torch.Generator().manual_seed(settings.seed)
            self.lora = LoraSet(self.network, settings.rank, DTYPES[settings.lora_dtype], self.generator,
                                settings.algorithm)
            self.existing_modules = self.lora.load_existing(self.network, existing) if existing else 0
            self.lora.to(self.device)
            self.optimizer = _optimizer(settings.optimizer, self.lora.parameters(), settings.learning_rate)
        self.step_index = 0          # batches done (optimizer steps x accumulation)
        self.losses: list[float] = []

    def _load(self) -> None:
        """Weights on the compute device with the MODEL's own patches applied (again, if another
        model was loaded meanwhile)."""
        load_models_gpu([self.patcher], force_full_load=True)

    def _model_cond(self, entry, latent: torch.Tensor) -> dict:
        cond, extras = entry[0], entry[1] if len(entry) > 1 else {}
        converted = convert_cond([[cond.float().clone(), dict(extras)]])
        (encoded,) = encode_model_conds(self.base.extra_conds, converted, latent, self.device, "positive",
                                        latent_image=latent)
        return {k: v.process_cond(batch_size=1, device=self.device) for k, v in encoded["model_conds"].items()}

    def _denoise(self, xt: torch.Tensor, sigmas: torch.Tensor, index: list[int]) -> torch.Tensor:
        inputs = _batch_conds([self.conds[i] for i in index])
        options = dict(self.patcher.model_options.get("transformer_options", {}))
        with autocast(self.device, self.compute_dtype):
            return self.base.apply_model(xt, sigmas, transformer_options=options, **inputs)

    @property
    def total_batches(self) -> int:
        return self.settings.steps * self.settings.grad_accumulation_steps

    @property
    def done(self) -> bool:
        return self.step_index >= self.total_batches

    @contextlib.contextmanager
    def _training(self):
        self._load()
        with torch.inference_mode(False), torch.enable_grad(), self.lora.installed(self.network), \
                gradient_checkpointing(self.network, self.settings.gradient_checkpointing):
            yield

    def step(self) -> tuple[float, torch.Tensor]:
        """One batch: (loss, the model's denoised estimate of its first image, for previews)."""
        s = self.settings
        ms = self.model_sampling
        n = self.latents.shape[0]
        with self._training():
            index = torch.randperm(n, generator=self.generator)[:s.batch_size].tolist()
            x0 = self.latents[index]
            noise = prepare_noise(x0.cpu(), s.seed + self.step_index * 1000).to(self.device)
            sigmas = torch.tensor([ms.percent_to_sigma(torch.rand(1, generator=self.generator).item())
                                   for _ in index], device=self.device)
            xt = x0 + noise * sigmas.view(-1, *([1] * (x0.ndim - 1)))
            pred = self._denoise(xt, sigmas, index)
            loss = elementwise_loss(pred.float(), x0, LOSSES[s.loss_function]).mean()
            loss.backward()
            self.step_index += 1
            if self.step_index % s.grad_accumulation_steps == 0:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        value = float(loss.item())
        self.losses.append(value)
        return value, pred[:1].detach().float()

    def validation_loss(self, percents: tuple[float, ...] = (0.2, 0.5, 0.8), seed: int = 12345) -> float:
        """The loss over every image at fixed noise levels and noise (no training, no randomness
        drawn from the run's generator): comparable between steps and between runs."""
        ms = self.model_sampling
        x0 = self.latents
        everything = list(range(x0.shape[0]))
        total = 0.0
        with self._training(), torch.no_grad():
            for k, percent in enumerate(percents):
                noise = prepare_noise(x0.cpu(), seed + k).to(self.device)
                sigma = torch.full((x0.shape[0],), ms.percent_to_sigma(percent), device=self.device)
                xt = x0 + noise * sigma.view(-1, *([1] * (x0.ndim - 1)))
                pred = self._denoise(xt, sigma, everything)
                total += elementwise_loss(pred.float(), x0, LOSSES[self.settings.loss_function]).mean().item()
        return total / len(percents)

    def run(self, on_step: StepHook | None = None) -> list[float]:
        """Train to the end; `on_step(batch, total, loss, preview_x0)` after each batch (it may
        raise to stop, e.g. on an interrupt; the trainer stays consistent and can go on)."""
        while not self.done:
            loss, x0 = self.step()
            if on_step is not None:
                on_step(self.step_index, self.total_batches, loss, x0)
        return self.losses

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA file's tensors (kohya layout, in lora_dtype)."""
        return self.lora.kohya_state_dict(DTYPES[self.settings.lora_dtype])

    # -- resume ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"lora": self.lora.state_dict(), "alphas": {k: a.alpha for k, a in self.lora.adapters.items()},
                "algorithms": {k: a.algorithm for k, a in self.lora.adapters.items()},
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "step_index": self.step_index, "losses": list(self.losses)}

    def load_state_dict(self, state: Mapping) -> None:
        with torch.inference_mode(False):
            for name in list(self.lora.adapters):   # algorithms and shapes may differ from a new set's
                adapter = self.lora.use_algorithm(self.network, name, state.get("algorithms", {}).get(name, "LoRA"))
                for key, value in state["lora"].items():
                    if key.startswith(f"adapters.{name}."):
                        setattr(adapter, key[len(f"adapters.{name}."):], nn.Parameter(value.clone()))
                adapter.alpha = state["alphas"][name]
            self.lora.to(self.device)
            self.lora.load_state_dict(state["lora"])
            self.optimizer = _optimizer(self.settings.optimizer, self.lora.parameters(), self.settings.learning_rate)
            self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step_index = int(state["step_index"])
        self.losses = list(state["losses"])


STEPS_IN_NAME = re.compile(r"_(\d+)_steps_")


def steps_in_filename(name: str) -> int:
    """Steps a LoRA named by SaveLoRANode was trained for ("..._120_steps_00001_.safetensors"),
    0 when the name says none."""
    match = STEPS_IN_NAME.search(name)
    return int(match.group(1)) if match else 0
