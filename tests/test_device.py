"""Device/dtype policy, the loaded-file cache and LRU offloading (fake GPU sizes, CPU only)."""
import argparse
import gc
import os
import weakref

import pytest
import torch
from torch import nn

from diffusion.device import (DevicePolicy, ModelCache, ModelManager, inference_mode, module_bytes,
                              pick_device)


# ---------------------------------------------------------------------------------------------
# policy


def test_cpu_policy_is_fp32_and_cuda_policy_follows_capability():
    cpu = DevicePolicy.choose(cuda_available=False)
    assert cpu.load_device == torch.device("cpu")
    assert (cpu.unet_dtype, cpu.text_dtype, cpu.vae_dtype) == (torch.float32,) * 3

    ampere = DevicePolicy.choose(cuda_available=True, capability=(8, 6))
    assert ampere.load_device == torch.device("cuda", 0) and ampere.offload_device == torch.device("cpu")
    assert (ampere.unet_dtype, ampere.text_dtype, ampere.vae_dtype) == (torch.float16, torch.float16, torch.bfloat16)

    turing = DevicePolicy.choose(cuda_available=True, capability=(7, 5))
    assert (turing.unet_dtype, turing.vae_dtype) == (torch.float16, torch.float32)
    pascal = DevicePolicy.choose(cuda_available=True, capability=(6, 1))
    assert (pascal.unet_dtype, pascal.vae_dtype) == (torch.float32, torch.float32)


def test_flags_force_device_and_dtypes():
    assert pick_device(cpu=True, cuda_available=True) == torch.device("cpu")
    assert pick_device(cuda_available=True) == torch.device("cuda", 0)
    assert DevicePolicy.choose(cpu=True, cuda_available=True).load_device == torch.device("cpu")
    forced = DevicePolicy.choose(cuda_available=True, capability=(8, 9), force_fp32=True)
    assert (forced.unet_dtype, forced.vae_dtype) == (torch.float32, torch.float32)
    bf16 = DevicePolicy.choose(cuda_available=True, capability=(8, 9), force_bf16=True, vae_dtype="fp32")
    assert (bf16.unet_dtype, bf16.vae_dtype) == (torch.bfloat16, torch.float32)
    # half precision is never used for compute on the CPU, even when asked
    cpu16 = DevicePolicy.choose(cuda_available=False, force_fp16=True, vae_dtype="fp16")
    assert (cpu16.unet_dtype, cpu16.vae_dtype) == (torch.float32, torch.float32)
    assert len(cpu16.notes) == 2
    assert DevicePolicy.choose(cuda_available=False, force_bf16=True).unet_dtype == torch.bfloat16


def test_policy_from_cli_args():
    policy = DevicePolicy.from_args(argparse.Namespace(cpu=True))
    assert policy.load_device == torch.device("cpu") and policy.unet_dtype == torch.float32


def test_inference_mode_marks_tensors():
    with inference_mode():
        t = torch.ones(2) * 2
    assert t.is_inference() and not t.requires_grad


def test_module_bytes_counts_shared_storage_once():
    lin = nn.Linear(10, 10)
    assert module_bytes(lin) == (100 + 10) * 4
    tied = nn.Sequential(lin, lin)
    assert module_bytes(tied) == (100 + 10) * 4


# ---------------------------------------------------------------------------------------------
# file cache


class Loaded(nn.Module):
    def __init__(self, path):
        super().__init__()
        self.path = path
        self.weight = nn.Parameter(torch.zeros(4))


def counting_loader(calls: list):
    def load(path):
        calls.append(path.name)
        return Loaded(path)
    return load


def test_same_file_is_a_cache_hit_and_a_changed_file_is_not(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"one")
    calls, cache = [], ModelCache()
    first = cache.get("checkpoint", path, counting_loader(calls))
    assert cache.get("checkpoint", tmp_path / "." / "a.safetensors", counting_loader(calls)) is first
    assert calls == ["a.safetensors"] and (cache.hits, cache.misses) == (1, 1)
    # different load options are a different entry
    other = cache.get("checkpoint", path, counting_loader(calls), options=("bf16",))
    assert other is not first and len(calls) == 2
    # the file replaced in place (new size and mtime) is loaded again
    path.write_bytes(b"second version")
    os.utime(path, ns=(1, 10**18))
    assert cache.get("checkpoint", path, counting_loader(calls)) is not first and len(calls) == 3


def test_switching_checkpoints_frees_the_old_one(tmp_path):
    a, b, v = tmp_path / "a.ckpt", tmp_path / "b.ckpt", tmp_path / "vae.pt"
    for p in (a, b, v):
        p.write_bytes(p.name.encode())
    calls, cache = [], ModelCache()
    manager = ModelManager("cpu")
    model_a = cache.get("checkpoint", a, counting_loader(calls))
    vae = cache.get("vae", v, counting_loader(calls))
    manager.use(model_a, vae)
    gone = weakref.ref(model_a)
    del model_a
    gc.collect()
    assert gone() is not None            # still cached
    cache.get("checkpoint", b, counting_loader(calls))
    gc.collect()
    assert gone() is None                # neither the cache nor the manager kept it
    assert cache.get("vae", v, counting_loader(calls)) is vae   # other kinds are untouched
    cache.evict()
    assert len(cache) == 0


# ---------------------------------------------------------------------------------------------
# offloading with fake sizes


class FakeGPU:
    """A pretend device of `capacity` bytes; the manager's bookkeeping decides what is on it."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.moves: list[tuple[str, str]] = []
        self.manager = ModelManager("cuda:0", "cpu", free_fn=self.free, mover=self.move)

    def free(self) -> int:
        return self.capacity - self.manager.loaded_bytes()

    def move(self, model, device):
        self.moves.append((model.name, str(device)))


def named(name: str) -> nn.Module:
    m = nn.Linear(1, 1)
    m.name = name
    return m


def test_ensure_room_offloads_least_recently_used_first():
    gpu = FakeGPU(capacity=100)
    a, b, c = named("a"), named("b"), named("c")
    for m in (a, b, c):
        gpu.manager.register(m, size=30, loaded=False)
    gpu.manager.use(a)
    gpu.manager.use(b)
    gpu.manager.use(c)
    assert gpu.moves == [("a", "cuda:0"), ("b", "cuda:0"), ("c", "cuda:0")]
    assert gpu.free() == 10
    gpu.manager.use(a)                      # a becomes the most recently used
    gpu.moves.clear()
    assert gpu.manager.ensure_room(40)      # frees b (LRU) only: 10 + 30 = 40
    assert gpu.moves == [("b", "cpu")]
    assert [gpu.manager.is_loaded(m) for m in (a, b, c)] == [True, False, True]
    gpu.moves.clear()
    assert gpu.manager.ensure_room(70, keep=[c])    # c is in use: only a may go
    assert gpu.moves == [("a", "cpu")]
    assert not gpu.manager.ensure_room(200)         # cannot be done; says so
    assert gpu.moves[-1] == ("c", "cpu") and gpu.free() == 100


def test_use_makes_room_for_model_plus_working_memory():
    gpu = FakeGPU(capacity=100)
    unet, text, vae = named("unet"), named("text"), named("vae")
    gpu.manager.register(unet, size=60, loaded=False)
    gpu.manager.register(text, size=20, loaded=False)
    gpu.manager.register(vae, size=10, loaded=False)
    gpu.manager.use(text)
    gpu.manager.use(unet, extra_bytes=15)
    assert gpu.manager.is_loaded(text) and gpu.manager.is_loaded(unet)
    gpu.moves.clear()
    gpu.manager.use(vae, extra_bytes=25)    # 20 free, needs 35: the text encoder (LRU) goes
    assert gpu.moves == [("text", "cpu"), ("vae", "cuda:0")]
    gpu.manager.use(vae)                    # already there: no move
    assert gpu.moves == [("text", "cpu"), ("vae", "cuda:0")]
    gpu.manager.offload_all()
    assert gpu.manager.loaded_bytes() == 0


def test_manager_holds_models_weakly():
    gpu = FakeGPU(capacity=100)
    m = named("m")
    gpu.manager.use(m)
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None and gpu.manager.loaded_bytes() == 0


def test_real_moves_on_cpu_are_no_ops():
    manager = ModelManager("cpu")
    model = nn.Linear(3, 3)
    manager.use(model, extra_bytes=1)
    assert manager.is_loaded(model) and next(model.parameters()).device == torch.device("cpu")
    assert not manager.offloads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_offload_round_trip():
    manager = ModelManager(pick_device())
    model = nn.Linear(256, 256)
    manager.use(model)
    assert next(model.parameters()).is_cuda
    manager.offload(model)
    assert not next(model.parameters()).is_cuda
