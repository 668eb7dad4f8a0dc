"""TorchCompileModel: how long torch.compile takes on first use and what it saves per UNet call.

    python bench/bench_torch_compile.py                      # inductor, the parity tests' tiny UNet
    python bench/bench_torch_compile.py --backend cudagraphs --threads 2

Runs KSampler-style sampling (euler, CFG 3, a 16x16 latent) through the TorchCompileModel node on
the tiny SD1-layout UNet of tests/model_patch_cases.py: the first sampling (which traces and
compiles), then --repeats timed samplings of the compiled and of the eager model, alternating.
Prints wall times and the largest difference between their latents relative to the eager one.
Inductor keeps compiled kernels in an on-disk cache; the benchmark uses a fresh one unless told
--warm-cache, so the first sampling is a cold compile.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "compat")]

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="inductor", choices=["inductor", "cudagraphs"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warm-cache", action="store_true",
                        help="keep inductor's on-disk kernel cache (by default a fresh one, so the first "
                             "sampling shows a cold compile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.warm_cache:
        import os
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_cache_")

    from diffusion.ksampler import common_ksampler
    from tests import model_patch_cases as cases
    from tests.node_helpers import builtin_registry, call_in_context
    from tests.test_model_patch_parity import tiny_model

    registry = builtin_registry(Path(tempfile.mkdtemp()))
    eager = tiny_model(cases.WEIGHT_SEEDS["model"])
    (compiled,) = call_in_context(registry, "TorchCompileModel", model=eager, backend=args.backend)
    latent = {"samples": torch.zeros(1, 4, 16, 16)}

    def sample(model):
        start = time.perf_counter()
        with torch.inference_mode():
            out = common_ksampler(model, cases.SEED, args.steps, 3.0, "euler", "normal", cases.POSITIVE,
                                  cases.NEGATIVE, latent)["samples"]
        return time.perf_counter() - start, out

    first, out_compiled = sample(compiled)
    timings = {"compiled": [], "eager": []}
    for _ in range(args.repeats):
        for name, model in (("compiled", compiled), ("eager", eager)):
            seconds, out = sample(model)
            timings[name].append(seconds)
            if name == "eager":
                out_eager = out
    error = float((out_compiled - out_eager).abs().max() / out_eager.abs().max())
    print(f"backend {args.backend}, {args.steps} steps ({2 * args.steps} UNet calls, batch 2), "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"first sampling (trace + compile): {first:.1f} s")
    for name, values in timings.items():
        print(f"{name:9s} best {min(values):.3f} s, median {statistics.median(values):.3f} s")
    print(f"max |compiled - eager| / max |eager|: {error:.2e}")


if __name__ == "__main__":
    main()
