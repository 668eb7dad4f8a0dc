"""Finishing a plugin's coroutine from synchronous code.

ComfyUI lets VALIDATE_INPUTS, IS_CHANGED, check_lazy_status and a node's FUNCTION be `async def`.
The executor awaits them on its own loop; validation and plugin loading run outside any loop and
use `run_sync`.
"""
from __future__ import annotations

import asyncio
import inspect
from concurrent.futures import ThreadPoolExecutor
from typing import Any


async def _wait(awaitable: Any) -> Any:
    return await awaitable


def run_sync(value: Any) -> Any:
    """`value` itself, or what it resolves to when it is awaitable."""
    if not inspect.isawaitable(value):
        return value
    try:
        asyncio.get_running_loop()
        loop_runs = True
    except RuntimeError:
        loop_runs = False
    if not loop_runs:  # outside the except block, so a node's error is not chained to this one
        return asyncio.run(_wait(value))
    # A loop already runs on this thread and cannot be re-entered: finish on a helper thread.
    with ThreadPoolExecutor(1, thread_name_prefix="run-sync") as pool:
        return pool.submit(asyncio.run, _wait(value)).result()
