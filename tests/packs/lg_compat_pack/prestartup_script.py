"""Runs before any pack imports (ComfyUI's prestartup contract): leaves a mark the pack reports."""
import os

os.environ["LG_COMPAT_PRESTARTUP"] = "ran before import"
