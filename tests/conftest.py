import os
import shutil
from pathlib import Path

import pytest
import torch

from app.args import parse_args
from app.runtime import create_runtime
from app.folders import BUILTIN_MODELS_ENV
from diffusion.device import CPU_BF16_ENV

# Many tests compare with numbers ComfyUI computed in fp32 on the CPU: keep the suite (and every
# server or command it starts, which inherit the environment) in fp32 whatever this CPU offers.
# Tests of the bf16 default choose it explicitly.
os.environ[CPU_BF16_ENV] = "0"
# Tests list the model files they put in place; the shipped built-in model is listed only in the
# tests about it (the `builtin_models` fixture).
os.environ[BUILTIN_MODELS_ENV] = "0"
# One torch thread per test worker and per server or command it starts. The suite runs two workers
# on two cores: with a pool of two threads each, every parallel region of a small network waits for
# a core the other process holds (a 300-step prompt on the tiny checkpoint took 4.5 s alone and 93 s
# beside two busy processes; 10 s on one thread). Tests whose references were recorded with more
# threads ask for them (`recorded_threads`).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
# ComfyUI's default pool on the 2-core machine where the references under tests/data/attention,
# comfy_nodes and loaders were recorded. oneDNN sizes its convolution blocks by the thread count,
# so the last bits of a result depend on it.
RECORDED_THREADS = 2


@pytest.fixture
def builtin_models(monkeypatch):
    """The shipped built-in model listed again, as on a user's machine (this process and the
    servers and commands it starts)."""
    monkeypatch.setenv(BUILTIN_MODELS_ENV, "1")

PACK = Path(__file__).parent / "packs" / "lg_test_nodes.py"
CACHE_POLICIES = ["classic", "lru:100", "none"]  # --cache-lru N counts node results, as in ComfyUI


def make_runtime(base: Path, *flags: str):
    """A real runtime over a temporary base directory with the test node pack installed."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    shutil.copy(PACK, base / "custom_nodes" / PACK.name)
    runtime = create_runtime(parse_args(["--base-directory", str(base), *flags]), log=lambda _msg: None)
    runtime.registry.get("TestValue").cls.calls.clear()
    return runtime


@pytest.fixture
def runtime(tmp_path):
    return make_runtime(tmp_path)


@pytest.fixture(params=CACHE_POLICIES)
def cached_runtime(request, tmp_path):
    """The same runtime under each cache policy; tests branch on runtime.policy where they differ."""
    flags = {"classic": ["--cache-classic"], "lru:100": ["--cache-lru", "100"], "none": ["--cache-none"]}
    rt = make_runtime(tmp_path, *flags[request.param])
    rt.policy = request.param
    return rt


def calls(runtime):
    return runtime.registry.get("TestValue").cls.calls


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """tiny_checkpoint(family) -> path of a whole random-weight checkpoint in the real layout
    (families: tests.models_tiny.CHECKPOINT_FAMILIES), written once per test session."""
    from tests.models_tiny import write_tiny_full_checkpoint

    folder = tmp_path_factory.mktemp("tiny_checkpoints")
    written: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in written:
            written[family] = write_tiny_full_checkpoint(folder / f"{family}.safetensors", family)
        return written[family]

    yield get
    # up to 1.5 GB of weights: not worth keeping among pytest's retained temporary folders
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def hostile_server(tmp_path_factory):
    """One server for the reliability tests (tests/test_reliability_*.py): the test and hostile
    node packs, a 1 MB body limit and a 1 s header/idle timeout. Nothing it is sent may leave a
    traceback in its log."""
    from tests.server_helpers import LiveServer

    srv = LiveServer(tmp_path_factory.mktemp("reliability"), "--max-upload-size", "1", "--http-timeout", "1",
                     packs=("lg_test_nodes.py", "lg_hostile_nodes.py")).start()
    yield srv
    srv.stop()
    log = srv.log()
    assert "Traceback" not in log and "unhandled error" not in log, log[-5000:]


@pytest.fixture(scope="module")
def recorded_threads():
    """The torch pool ComfyUI had when a module's references were recorded (RECORDED_THREADS), for
    tests that compare bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(RECORDED_THREADS)
    yield
    torch.set_num_threads(threads)
