"""Where the test data lives (../shared beside the checkout: spec key lists, saved workflows) and how
the reference files recorded from ComfyUI are read."""
from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SPEC_KEYS = SHARED / "spec" / "keys"
SHARED_WORKFLOWS = SHARED / "workflows"


def read_reference(path: Path) -> tuple[dict, dict]:
    """A reference recorded by a tests/data/*/make_reference.py: (tensors, the "json" metadata)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}, json.loads(f.metadata()["json"])  # noqa: SIM118
