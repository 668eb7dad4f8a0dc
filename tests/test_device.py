"""Device/dtype policy and the model-lifetime service: the file cache, LRU offloading on a GPU
(a pretend device of fixed capacity, CPU only), releasing and rebuilding networks on the CPU
under a budget, and ComfyUI's memory flags."""
import argparse
import gc
import os
import weakref

import pytest
import torch
from torch import nn

from app.args import parse_args
from diffusion.device import CPU_BF16_ENV, DevicePolicy, cpu_has_native_bf16, inference_mode, module_bytes, pick_device
from diffusion.model_management import MemoryOptions, ModelManagement, VRAMState
from diffusion.model_patcher import ModelPatcher

# ---------------------------------------------------------------------------------------------
# policy


def test_cpu_policy_follows_native_bf16_and_cuda_policy_follows_capability():
    cpu = DevicePolicy.choose(cuda_available=False, cpu_bf16=False)
    assert cpu.load_device == torch.device("cpu")
    # the text encoder is stored in fp16 on the CPU (ComfyUI's text_encoder_dtype), computed in fp32
    assert (cpu.unet_dtype, cpu.text_dtype, cpu.vae_dtype) == (torch.float32, torch.float16, torch.float32)
    assert cpu.notes == ()
    # native bf16: UNet and VAE in bf16
    native = DevicePolicy.choose(cuda_available=False, cpu_bf16=True)
    assert (native.unet_dtype, native.text_dtype, native.vae_dtype) == (torch.bfloat16, torch.float16, torch.bfloat16)
    assert any("--force-fp32" in note for note in native.notes)
    # --force-fp32 restores ComfyUI's CPU numerics: fp32 UNet and VAE, the text encoder as ComfyUI's
    exact = DevicePolicy.choose(cuda_available=False, cpu_bf16=True, force_fp32=True)
    assert (exact.unet_dtype, exact.text_dtype, exact.vae_dtype) == (torch.float32, torch.float16, torch.float32)
    assert exact.notes == ()
    # the VAE can be kept in fp32 on its own
    assert DevicePolicy.choose(cuda_available=False, cpu_bf16=True, vae_dtype="fp32").vae_dtype == torch.float32

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


def test_policy_from_cli_args(monkeypatch):
    policy = DevicePolicy.from_args(argparse.Namespace(cpu=True))   # the suite's probe says no bf16
    assert policy.load_device == torch.device("cpu") and policy.unet_dtype == torch.float32
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert DevicePolicy.from_args(argparse.Namespace(cpu=True)).unet_dtype == torch.bfloat16
    forced = DevicePolicy.from_args(argparse.Namespace(cpu=True, force_fp32=True))
    assert (forced.unet_dtype, forced.vae_dtype) == (torch.float32, torch.float32)
    # ComfyUI's text-encoder storage flags, on the CPU and on a GPU
    for flag, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        assert DevicePolicy.from_args(parse_args(["--cpu", f"--{flag}-text-enc"])).text_dtype == dtype
        assert DevicePolicy.choose(cuda_available=True, capability=(8, 9), text_dtype=flag).text_dtype == dtype
    with pytest.raises(SystemExit):
        parse_args(["--fp32-text-enc", "--fp16-text-enc"])


CPUINFO = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw {extra}\nbogomips\t: 5192\n"


def test_native_bf16_probe_reads_cpu_flags_and_torch_capability(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    assert cpu_has_native_bf16(CPUINFO.format(extra="avx512_bf16"), "AVX512")
    assert cpu_has_native_bf16(CPUINFO.format(extra="amx_bf16 amx_tile"), "AVX512")
    # AVX512 without the bf16 extension only emulates bf16 (slower than fp32)
    assert not cpu_has_native_bf16(CPUINFO.format(extra=""), "AVX512")
    # a flag inside another word does not count, nor do flags when torch runs its AVX2 kernels
    assert not cpu_has_native_bf16(CPUINFO.format(extra="xavx512_bf16"), "AVX512")
    assert not cpu_has_native_bf16(CPUINFO.format(extra="avx512_bf16"), "AVX2")
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert cpu_has_native_bf16(CPUINFO.format(extra=""), "DEFAULT")
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert not cpu_has_native_bf16(CPUINFO.format(extra="avx512_bf16"), "AVX512")


def test_start_up_report_names_the_precision_and_how_to_get_fp32():
    from app.console import device_lines

    native = device_lines(DevicePolicy.choose(cuda_available=False, cpu_bf16=True))
    assert "Precision: UNet bf16, text encoder fp16 (computed in fp32), VAE bf16" in native
    assert any(line.startswith("Note: ") and "--force-fp32" in line for line in native)
    exact = device_lines(DevicePolicy.choose(cuda_available=False, cpu_bf16=True, force_fp32=True))
    assert "Precision: UNet fp32, text encoder fp16 (computed in fp32), VAE fp32" in exact
    stored32 = device_lines(DevicePolicy.choose(cuda_available=False, force_fp32=True, text_dtype="fp32"))
    assert "Precision: UNet fp32, text encoder fp32, VAE fp32" in stored32
    assert not any(line.startswith("Note: ") for line in exact)


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


def cpu_service(**options) -> ModelManagement:
    return ModelManagement(DevicePolicy.choose(cpu=True), MemoryOptions(VRAMState.DISABLED, **options))


def test_same_file_is_a_cache_hit_and_a_changed_file_is_not(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"one")
    calls, service = [], cpu_service()
    first = service.cached("checkpoint", path, counting_loader(calls))
    assert service.cached("checkpoint", tmp_path / "." / "a.safetensors", counting_loader(calls)) is first
    assert calls == ["a.safetensors"] and (service.cache_hits, service.cache_misses) == (1, 1)
    # different load options are a different entry
    other = service.cached("checkpoint", path, counting_loader(calls), options=("bf16",))
    assert other is not first and len(calls) == 2
    # the file replaced in place (new size and mtime) is loaded again
    path.write_bytes(b"second version")
    os.utime(path, ns=(1, 10**18))
    assert service.cached("checkpoint", path, counting_loader(calls)) is not first and len(calls) == 3


def test_switching_checkpoints_forgets_the_old_one(tmp_path):
    a, b, v = tmp_path / "a.ckpt", tmp_path / "b.ckpt", tmp_path / "vae.pt"
    for p in (a, b, v):
        p.write_bytes(p.name.encode())
    calls, service = [], cpu_service()
    model_a = service.cached("checkpoint", a, counting_loader(calls))
    vae = service.cached("vae", v, counting_loader(calls))
    service.register(model_a)
    service.load_models_gpu([ModelPatcher(model_a, "cpu", "cpu")])
    gone = weakref.ref(model_a)
    del model_a
    gc.collect()
    assert gone() is not None            # still cached
    service.cached("checkpoint", b, counting_loader(calls))
    gc.collect()
    assert gone() is None                # neither the cache nor the service kept it
    assert service.cached("vae", v, counting_loader(calls)) is vae   # other kinds are untouched
    service.forget_files()
    assert service.cached_count() == 0


# ---------------------------------------------------------------------------------------------
# offloading on a GPU (a pretend device: bookkeeping only, nothing moves)


class FakeGPUPatcher(ModelPatcher):
    """A ModelPatcher whose network "moves" to a pretend cuda:0 of which the test keeps account."""

    def __init__(self, name: str, size: int, log: list):
        super().__init__(nn.Linear(1, 1), torch.device("cuda", 0), torch.device("cpu"), size=size)
        self.name, self.log = name, log
        self.model.device = torch.device("cpu")

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        if self.model.model_loaded_weight_memory == self.size:
            return 0
        self.log.append((self.name, "cuda"))
        self.model.model_loaded_weight_memory, self.model.device = self.size, torch.device(device_to)
        return self.size

    def detach(self, unpatch_all=True):
        self.log.append((self.name, "cpu"))
        self.model.model_loaded_weight_memory, self.model.device = 0, torch.device("cpu")
        return self.model

    def partially_unload(self, device_to, memory_to_free=0):
        return 0


CUDA0 = torch.device("cuda", 0)


class FakeGPU:
    """A pretend cuda:0 of `capacity` bytes; free memory is what the loaded patchers leave."""

    def __init__(self, capacity: int, **options):
        self.capacity, self.moves = capacity, []
        policy = DevicePolicy.choose(cuda_available=True, capability=(8, 6))
        defaults = dict(vram_state=VRAMState.HIGH_VRAM, reserve=0)
        self.service = ModelManagement(policy, MemoryOptions(**{**defaults, **options}), free_fn=self.free)
        self.service.minimum_inference_memory = lambda: 0

    def free(self, device) -> int:
        return self.capacity - self.service.loaded_bytes(device)

    def patcher(self, name: str, size: int) -> FakeGPUPatcher:
        return FakeGPUPatcher(name, size, self.moves)

    def on_gpu(self) -> list[str]:
        return sorted(lm.model.name for lm in self.service.current_loaded_models)


def test_loading_offloads_least_recently_used_first():
    gpu = FakeGPU(capacity=100)
    a, b, c = gpu.patcher("a", 30), gpu.patcher("b", 30), gpu.patcher("c", 30)
    for m in (a, b, c):
        gpu.service.load_models_gpu([m])
    assert gpu.moves == [("a", "cuda"), ("b", "cuda"), ("c", "cuda")] and gpu.free(CUDA0) == 10
    gpu.service.load_models_gpu([a])           # a becomes the most recently used, no move
    assert len(gpu.moves) == 3
    gpu.moves.clear()
    d = gpu.patcher("d", 36)
    gpu.service.load_models_gpu([d])           # needs 36 + 10%: b (least recently used) goes
    assert gpu.moves == [("b", "cpu"), ("d", "cuda")] and gpu.on_gpu() == ["a", "c", "d"]
    gpu.moves.clear()
    gpu.service.load_models_gpu([c, b])        # c is in use; b comes back; a (LRU) goes
    assert gpu.moves[0] == ("a", "cpu") and ("b", "cuda") in gpu.moves and gpu.on_gpu() == ["b", "c", "d"]
    gpu.service.unload_all_models()
    assert gpu.on_gpu() == [] and gpu.free(CUDA0) == 100


def test_working_memory_is_made_room_for():
    # ComfyUI's rule: a load needs 1.1 x the weights plus the working memory free.
    gpu = FakeGPU(capacity=110)
    unet, text, vae = gpu.patcher("unet", 60), gpu.patcher("text", 20), gpu.patcher("vae", 10)
    gpu.service.load_models_gpu([text])
    gpu.service.load_models_gpu([unet], memory_required=15)    # 90 free >= 66 + 15
    assert gpu.on_gpu() == ["text", "unet"]
    gpu.moves.clear()
    gpu.service.load_models_gpu([vae], memory_required=25)   # 30 free < 11 + 25: text (LRU) goes
    assert gpu.moves == [("text", "cpu"), ("vae", "cuda")]


def test_without_smart_memory_everything_else_leaves():
    gpu = FakeGPU(capacity=1000, smart_memory=False)
    a, b = gpu.patcher("a", 10), gpu.patcher("b", 10)
    gpu.service.load_models_gpu([a])
    gpu.service.load_models_gpu([b])
    assert gpu.on_gpu() == ["b"] and ("a", "cpu") in gpu.moves


def test_the_service_holds_patchers_weakly():
    gpu = FakeGPU(capacity=100)
    m = gpu.patcher("m", 10)
    gpu.service.load_models_gpu([m])
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None
    gpu.service.cleanup_models()
    assert gpu.service.current_loaded_models == []


# ---------------------------------------------------------------------------------------------
# the CPU: networks released under a budget and rebuilt from their source


def numbered(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)).requires_grad_(False)


def test_cpu_budget_releases_the_least_recently_used_network_and_rebuilds_it_on_use():
    size = sum(t.numel() * 4 for t in numbered(0).state_dict().values())
    service = cpu_service(budget=int(size * 1.5))
    first, second = numbered(1), numbered(2)
    want = {k: v.clone() for k, v in first.state_dict().items()}
    service.register(first, rebuild=lambda: numbered(1), name="first")
    patcher = ModelPatcher(first, "cpu", "cpu")
    service.load_models_gpu([patcher])
    service.make_room_for_load(size)            # a loader about to read `second`
    assert service.is_dropped(first) and all(t.is_meta for t in first.state_dict().values())
    service.register(second, rebuild=lambda: numbered(2), name="second")
    service.load_models_gpu([patcher])          # the first again: rebuilt, and the second released
    assert not service.is_dropped(first) and service.is_dropped(second)
    assert all(torch.equal(v, want[k]) for k, v in first.state_dict().items())
    assert (service.drops, service.rebuilds) == (2, 1)


def test_drop_all_releases_every_rebuildable_network():
    service = cpu_service()
    kept, dropped = numbered(3), numbered(4)
    service.register(kept)                       # no way to rebuild: stays
    service.register(dropped, rebuild=lambda: numbered(4))
    service.load_models_gpu([ModelPatcher(dropped, "cpu", "cpu")])
    assert service.drop_all() == 1
    assert service.is_dropped(dropped) and not service.is_dropped(kept)
    assert service.current_loaded_models == []


def test_memory_flags_follow_comfyui():
    parse = lambda *a: argparse.Namespace(**{"lowvram": False, "novram": False, "highvram": False,  # noqa: E731
                                             "gpu_only": False, "reserve_vram": None,
                                             "disable_smart_memory": False, "model_memory_budget": None,
                                             **dict(a)})
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert MemoryOptions.from_args(parse(), cpu).vram_state == VRAMState.DISABLED
    assert MemoryOptions.from_args(parse(), cuda).vram_state == VRAMState.NORMAL_VRAM
    assert MemoryOptions.from_args(parse(("lowvram", True)), cuda).vram_state == VRAMState.LOW_VRAM
    assert MemoryOptions.from_args(parse(("novram", True)), cuda).vram_state == VRAMState.NO_VRAM
    assert MemoryOptions.from_args(parse(("highvram", True)), cuda).vram_state == VRAMState.HIGH_VRAM
    options = MemoryOptions.from_args(parse(("reserve_vram", 1.5), ("disable_smart_memory", True),
                                            ("model_memory_budget", 300.0)), cuda)
    assert (options.reserve, options.smart_memory, options.budget) == (int(1.5 * 2**30), False, 300 * 2**20)
    assert MemoryOptions.from_args(parse(), cpu).reserve == 400 * 2**20  # ComfyUI's default


def test_lowvram_modules_are_cast_per_call_with_their_patches():
    """A partial load keeps modules that do not fit on the offload device and casts them, patches
    applied, for each call: the output equals a full load's."""
    net = numbered(5)
    x = torch.randn(2, 64)
    delta = torch.randn(64, 64) * 0.01
    full = ModelPatcher(net, "cpu", "cpu")
    full.add_patches({"1.weight": ("diff", (delta,))})
    with torch.no_grad():
        want = torch.nn.functional.linear(torch.nn.functional.linear(x, net[0].weight, net[0].bias),
                                          net[1].weight + delta, net[1].bias)
        full.patch_model("cpu", lowvram_model_memory=1)   # everything "does not fit"
        assert net.model_lowvram and net[1].weight_function
        got = net(x)
        full.unpatch_model("cpu")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert not net.model_lowvram and getattr(net[1], "_lg_cast", None) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_load_and_offload_round_trip():
    service = ModelManagement(DevicePolicy.choose())
    model = nn.Linear(256, 256)
    patcher = ModelPatcher(model, pick_device(), "cpu")
    service.load_models_gpu([patcher])
    assert next(model.parameters()).is_cuda
    service.unload_all_models()
    assert not next(model.parameters()).is_cuda


def test_cpu_budget_holds_when_a_resident_network_is_asked_for():
    # One checkpoint's three networks were read together (one load, nothing to release then) and
    # exceed the budget: asking for one releases the least recently used of the others.
    size = sum(t.numel() * 4 for t in numbered(0).state_dict().values())
    service = cpu_service(budget=int(size * 2.5))
    unet, text, vae = numbered(5), numbered(6), numbered(7)
    for seed, net in ((5, unet), (6, text), (7, vae)):
        service.register(net, rebuild=lambda seed=seed: numbered(seed))
    service.load_models_gpu([ModelPatcher(text, "cpu", "cpu")])     # 3 held, 2.5 allowed: the oldest goes
    assert service.is_dropped(unet) and not service.is_dropped(vae) and service.loaded_bytes("cpu") <= 2.5 * size
    service.load_models_gpu([ModelPatcher(unet, "cpu", "cpu")])     # rebuilt; the VAE, now oldest, goes
    assert service.is_dropped(vae) and not service.is_dropped(text) and service.loaded_bytes("cpu") <= 2.5 * size
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), numbered(5).state_dict().values()))


def test_without_a_budget_the_cpu_keeps_every_network():
    service = cpu_service()
    nets = [numbered(seed) for seed in (5, 6, 7)]
    for seed, net in zip((5, 6, 7), nets):
        service.register(net, rebuild=lambda seed=seed: numbered(seed))
    service.load_models_gpu([ModelPatcher(nets[0], "cpu", "cpu")])
    assert not any(service.is_dropped(n) for n in nets) and service.drops == 0


def sized(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(width, width, bias=False).requires_grad_(False)


def test_cpu_budget_releases_the_smallest_network_that_makes_the_room():
    # text encoder, UNet and VAE take turns; plain LRU would release the UNet (the oldest) while
    # the prompt is encoded and read all of it back for sampling
    unet, text, vae = sized(64, 1), sized(16, 2), sized(32, 3)
    size = {n: n.weight.numel() * 4 for n in (unet, text, vae)}
    service = cpu_service(budget=size[unet] + size[vae] + size[text] // 2)
    for seed, net in ((1, unet), (2, text), (3, vae)):
        service.register(net, rebuild=lambda seed=seed, w=net.weight.shape[0]: sized(w, seed))
    patcher = {n: ModelPatcher(n, "cpu", "cpu") for n in (unet, text, vae)}
    service.load_models_gpu([patcher[text]])
    assert [service.is_dropped(n) for n in (unet, text, vae)] == [False, False, True]
    service.load_models_gpu([patcher[unet]])    # UNet and text encoder fit: nothing to do
    assert (service.drops, service.rebuilds) == (1, 0)
    service.load_models_gpu([patcher[vae]])     # the VAE back; the text encoder alone makes room
    assert [service.is_dropped(n) for n in (unet, text, vae)] == [False, True, False]
    assert (service.drops, service.rebuilds) == (2, 1)
    assert torch.equal(vae.weight, sized(32, 3).weight)
