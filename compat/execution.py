"""ComfyUI's `execution` module for plugins: prompt validation and queue names over our engine.

validate_prompt answers with ComfyUI's tuple (valid, error, outputs, node_errors) from our
validator; PromptQueue reads the server's durable queue; the enums and helpers are ComfyUI's.
The executor itself is ours (graph/executor.py): ComfyUI's execute()/PromptExecutor internals
are not reproduced, so plugins that patch them have no effect.
"""
from __future__ import annotations

import asyncio
from enum import Enum
from typing import Any

from app import compat
from server.prompt_server import PromptQueue

SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
MAXIMUM_HISTORY_SIZE = 10000

__all__ = ["CacheType", "DuplicateNodeError", "ExecutionResult", "MAXIMUM_HISTORY_SIZE", "PromptQueue",
           "SENSITIVE_EXTRA_DATA_KEYS", "format_value", "full_type_name", "validate_prompt"]


class ExecutionResult(Enum):
    SUCCESS = 0
    FAILURE = 1
    PENDING = 2


class CacheType(Enum):
    CLASSIC = 0
    LRU = 1
    NONE = 2
    RAM_PRESSURE = 3


class DuplicateNodeError(Exception):
    pass


def full_type_name(klass: type) -> str:
    """"module.Class", or just "Class" for builtins."""
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def format_value(x: Any) -> Any:
    """A value as an error report shows it: None, plain scalars as they are, anything else as str."""
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    return str(x)


async def validate_prompt(prompt_id: str, prompt: dict, partial_execution_list: list[str] | None = None):
    """(valid, error, output node ids, node_errors) for an API-format prompt, as ComfyUI's."""
    checked = await asyncio.to_thread(compat.bound().executor.validate, prompt, partial_execution_list)
    return (checked.ok, None if checked.ok else checked.error, list(checked.outputs), checked.node_errors)
