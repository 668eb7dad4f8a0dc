"""Nodes for the cluster tests (tests/test_cluster.py), loaded by the server and every worker.

ClusterProbe says which process ran it (and leaves output/running/<value>.pid while it runs, so
a test can kill that worker); ClusterCheckpoint holds a checkpoint file in the model cache the
way the checkpoint loader does; ClusterServerOnly registers itself only outside Ray workers, so
the workers lack it.
"""
import os
import time

import folder_paths
from comfy.utils import ProgressBar


class ClusterProbe:
    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": 0, "max": 1 << 30}),
                             "steps": ("INT", {"default": 1, "min": 1, "max": 100000}),
                             "delay": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0})},
                "optional": {"anything": ("*",)}}

    def run(self, value, steps, delay, anything=None):
        started = time.time()
        running = os.path.join(folder_paths.get_output_directory(), "running")
        os.makedirs(running, exist_ok=True)
        with open(os.path.join(running, f"{value}.pid"), "w") as f:
            f.write(str(os.getpid()))
        bar = ProgressBar(steps)
        for _ in range(steps):
            time.sleep(delay)
            bar.update(1)  # raises when the prompt is interrupted
        return {"ui": {"pid": [os.getpid()], "value": [value], "started": [started]}}


class ClusterCheckpoint:
    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ("INT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}

    def run(self, ckpt_name):
        from pathlib import Path

        from app import compat

        path = Path(folder_paths.get_full_path("checkpoints", ckpt_name))
        data = compat.bound().env.models.cached("checkpoint", path, lambda p: p.read_bytes())
        return (len(data),)


class ClusterServerOnly:
    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}}

    def run(self, value):
        return {"ui": {"value": [value]}}


def _in_ray_worker() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


NODE_CLASS_MAPPINGS = {"ClusterProbe": ClusterProbe, "ClusterCheckpoint": ClusterCheckpoint}
if not _in_ray_worker():
    NODE_CLASS_MAPPINGS["ClusterServerOnly"] = ClusterServerOnly
