"""Where the test data beside the checkout lives: ../shared (spec key lists, saved workflows)."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SPEC_KEYS = SHARED / "spec" / "keys"
SHARED_WORKFLOWS = SHARED / "workflows"
