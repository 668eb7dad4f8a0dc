"""Seeded noise, drawn exactly as ComfyUI draws it so a seed reproduces the same image.

* Initial noise: a CPU generator seeded with the seed, one randn of the whole latent batch
  (or, with a batch_index list, one [1, C, H, W] draw per index up to the largest).
* Ancestral samplers: a generator on the latent's device seeded with the same seed, one randn
  of the full latent shape per noise injection.
* SDE samplers: a Brownian tree (torchsde) over [sigma_min, sigma_max], so the noise between two
  sigmas is consistent however the interval is subdivided.
"""

from __future__ import annotations

import numpy as np
import torch


def prepare_noise(latent: torch.Tensor, seed: int, batch_index: list[int] | None = None) -> torch.Tensor:
    """Initial noise for a latent batch, on the CPU in the latent's dtype."""
    generator = torch.manual_seed(seed)
    if batch_index is None:
        return torch.randn(latent.size(), dtype=latent.dtype, layout=latent.layout, generator=generator,
                           device="cpu")
    # Draw items 0..max(index) in order so an item's noise depends only on its index; this is
    # what lets a re-run of one image from a batch reproduce it.
    unique, inverse = np.unique(batch_index, return_inverse=True)
    wanted = set(int(i) for i in unique)
    kept = []
    for i in range(int(unique[-1]) + 1):
        item = torch.randn([1] + list(latent.size())[1:], dtype=latent.dtype, layout=latent.layout,
                           generator=generator, device="cpu")
        if i in wanted:
            kept.append(item)
    return torch.cat([kept[i] for i in np.asarray(inverse).reshape(-1)], dim=0)


class RandomNoise:
    """The RandomNoise node's NOISE object: a seed that generates a latent's initial noise."""

    def __init__(self, seed: int):
        self.seed = seed

    def generate_noise(self, latent: dict) -> torch.Tensor:
        return prepare_noise(latent["samples"], self.seed, latent.get("batch_index"))


class DisableNoise:
    """The DisableNoise node's NOISE object: zeros (for sampling a latent that is already noisy)."""

    seed = 0

    def generate_noise(self, latent: dict) -> torch.Tensor:
        samples = latent["samples"]
        return torch.zeros(samples.shape, dtype=samples.dtype, layout=samples.layout, device="cpu")


def add_noise(model, noise, sigmas: torch.Tensor, latent: dict) -> dict:
    """The AddNoise node: `latent` noised by `noise` (a NOISE object) to sigma |sigmas[0] -
    sigmas[-1]| (sigmas[0] for a one-sigma schedule), in the model's latent space and back."""
    if len(sigmas) == 0:
        return latent
    samples = latent["samples"]
    noisy = noise.generate_noise(latent)
    scale = torch.abs(sigmas[0] - sigmas[-1]) if len(sigmas) > 1 else sigmas[0]
    if torch.count_nonzero(samples) > 0:  # an empty latent stays 0: formats with a shift would move it
        samples = model.get_model_object("process_latent_in")(samples)
    noisy = model.get_model_object("model_sampling").noise_scaling(scale, noisy, samples)
    noisy = model.get_model_object("process_latent_out")(noisy)
    return {**latent, "samples": torch.nan_to_num(noisy, nan=0.0, posinf=0.0, neginf=0.0)}


class StepNoiseSampler:
    """Per-step Gaussian noise for ancestral samplers: `sampler(sigma, sigma_next)` returns one
    randn of x's shape from a generator on x's device seeded with `seed` (the global RNG if None).

    `seed_offset` exists because a CPU generator seeded like the initial noise repeats it on the
    first step; ComfyUI at the pinned version does exactly that (and later added +1 on the CPU),
    so the default 0 reproduces the pinned behaviour.
    """

    def __init__(self, x: torch.Tensor, seed: int | None = None, seed_offset: int = 0):
        self.shape, self.dtype, self.layout, self.device = x.size(), x.dtype, x.layout, x.device
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator(device=x.device)
            self.generator.manual_seed(seed + seed_offset)

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        return torch.randn(self.shape, dtype=self.dtype, layout=self.layout, device=self.device,
                           generator=self.generator)


class BatchedBrownianTree:
    """torchsde.BrownianTree over [t0, t1] with a sign flip so queries may run either way; one tree
    per seed when `seed` is a list (one per batch item)."""

    def __init__(self, x: torch.Tensor, t0, t1, seed=None, cpu: bool = True):
        import torchsde

        self.cpu_tree = cpu
        t0, t1, self.sign = self._sort(torch.as_tensor(t0), torch.as_tensor(t1))
        w0 = torch.zeros_like(x)
        self.batched = isinstance(seed, (tuple, list))
        if seed is None:
            seeds = (torch.randint(0, 2 ** 63 - 1, ()).item(),)
        elif self.batched:
            if len(seed) != x.shape[0]:
                raise ValueError("a list of seeds needs one seed per batch item")
            seeds, w0 = tuple(seed), w0[0]
        else:
            seeds = (seed,)
        if cpu:
            t0, w0, t1 = t0.detach().cpu(), w0.detach().cpu(), t1.detach().cpu()
        self.trees = tuple(torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seeds)

    @staticmethod
    def _sort(a, b):
        return (a, b, 1) if a < b else (b, a, -1)

    def __call__(self, t0, t1) -> torch.Tensor:
        t0, t1, sign = self._sort(torch.as_tensor(t0), torch.as_tensor(t1))
        device, dtype = t0.device, t0.dtype
        if self.cpu_tree:
            t0, t1 = t0.detach().cpu().float(), t1.detach().cpu().float()
        w = torch.stack([tree(t0, t1) for tree in self.trees]).to(device=device, dtype=dtype) * (self.sign * sign)
        return w if self.batched else w[0]


class BrownianTreeNoiseSampler:
    """Unit-variance noise between two sigmas from a Brownian tree: W(t1) - W(t0) / sqrt(|t1 - t0|).

    Used by the SDE samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde): because the tree is a
    function of the interval, the same seed gives the same Brownian path at any step count.
    `cpu=True` builds the tree on the CPU (the non-"_gpu" sampler names).
    """

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seed=None, transform=lambda s: s, cpu: bool = True):
        self.transform = transform
        t0 = self.transform(torch.as_tensor(sigma_min))
        t1 = self.transform(torch.as_tensor(sigma_max))
        self.tree = BatchedBrownianTree(x, t0, t1, seed, cpu=cpu)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        t0 = self.transform(torch.as_tensor(sigma))
        t1 = self.transform(torch.as_tensor(sigma_next))
        return self.tree(t0, t1) / (t1 - t0).abs().sqrt()
