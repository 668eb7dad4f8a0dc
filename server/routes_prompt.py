"""Queueing and running: /prompt, /queue, /interrupt, /free, /history (ComfyUI's shapes)."""
from __future__ import annotations

import asyncio
import logging
import math
import uuid
from typing import Any

from aiohttp import web

from app import console
from graph.errors import error as error_doc
from server.jsonio import BadRequest, json_response, raw_json_response, read_json_object
from server.queue import DuplicatePromptId, Job
from server.security import expects_json
from server.state import state_of

log = logging.getLogger(__name__)

# Secrets some clients put in extra_data for paid API nodes; never stored or listed.
_SECRET_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
MAX_PROMPT_ID = 256
_INT64 = 2 ** 63


def _prompt_error(status: int, err: dict, node_errors: dict | None = None) -> web.Response:
    return json_response({"error": err, "node_errors": node_errors or {}}, status=status)


def _bad_field(message: str) -> web.Response:
    return _prompt_error(400, error_doc("invalid_prompt", "Invalid prompt", message))


def _given_number(body: dict) -> float | int | None | web.Response:
    """The client's own priority number, None when it leaves it to the queue."""
    number = body.get("number")
    if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))
                               or not math.isfinite(number) or abs(number) > 2 ** 53):
        return _bad_field("'number' must be a finite number")
    return number


@expects_json
async def post_prompt(request: web.Request) -> web.Response:
    state = state_of(request)
    body = state.runtime.plugin_server.trigger_on_prompt(await read_json_object(request))
    if not isinstance(body, dict):
        return _bad_field("an on_prompt handler of a custom node returned something other than an object")
    console.log.info("got prompt")
    if "prompt" not in body:
        return _prompt_error(400, error_doc("no_prompt", "No prompt provided", "No prompt provided"))
    prompt = body["prompt"]
    prompt_id = body.get("prompt_id")
    if prompt_id is None:
        prompt_id = str(uuid.uuid4())
    elif not isinstance(prompt_id, str) or not prompt_id or len(prompt_id) > MAX_PROMPT_ID \
            or not prompt_id.isprintable():
        return _bad_field(f"'prompt_id' must be a non-empty printable string of at most {MAX_PROMPT_ID} characters")
    client_id = body.get("client_id")
    if client_id is not None and not isinstance(client_id, str):
        return _bad_field("'client_id' must be a string")
    extra_data = body.get("extra_data", {})
    if extra_data is None:
        extra_data = {}
    if not isinstance(extra_data, dict):
        return _bad_field("'extra_data' must be an object")
    extra_data = {k: v for k, v in extra_data.items() if k not in _SECRET_KEYS}
    if client_id:
        extra_data["client_id"] = client_id
    targets = body.get("partial_execution_targets")
    if targets is not None and (not isinstance(targets, list) or not all(isinstance(t, (str, int)) and
                                                                          not isinstance(t, bool) for t in targets)):
        return _bad_field("'partial_execution_targets' must be a list of node ids")
    if targets is not None:
        targets = [str(t) for t in targets]

    executor = state.runtime.executor
    try:
        # INPUT_TYPES may list folders; keep the event loop free while it does
        checked = await asyncio.to_thread(executor.validate, prompt, targets)
    except RecursionError:
        return _prompt_error(400, error_doc("invalid_prompt", "Invalid prompt", "the prompt is nested too deeply"))
    except Exception as exc:  # a plugin's INPUT_TYPES or VALIDATE_INPUTS blew up
        log.exception("validation of a prompt raised")
        return _prompt_error(400, error_doc("exception_during_validation", "Exception during validation",
                                            f"{type(exc).__name__}: {exc}"))
    console.report_validation(checked.as_dict(), checked.ok, console.log.info)
    if not checked.ok:
        return _prompt_error(400, checked.error or error_doc("invalid_prompt", "Invalid prompt"), checked.node_errors)

    number = _given_number(body)
    if isinstance(number, web.Response):
        return number
    front = bool(body.get("front"))

    def store() -> float | int:
        # a commit can wait for the worker's; the event loop must not
        given = number if number is not None else state.store.next_number(front=front)
        state.store.enqueue(Job(given, prompt_id, prompt, extra_data, list(checked.outputs)))
        return given

    try:
        number = await asyncio.to_thread(store)
    except DuplicatePromptId:
        return _bad_field(f"prompt_id {prompt_id!r} is already queued or in the history")
    state.worker.submit(prompt_id, checked)
    state.notify_queue()
    return json_response({"prompt_id": prompt_id, "number": number, "node_errors": checked.node_errors})


async def get_prompt(request: web.Request) -> web.Response:
    return json_response(state_of(request).queue_status())


async def get_queue(request: web.Request) -> web.Response:
    store = state_of(request).store
    running, pending = await asyncio.to_thread(lambda: (store.queue_items("running"), store.queue_items("pending")))
    return raw_json_response('{"queue_running": [' + ", ".join(running) + '], "queue_pending": ['
                             + ", ".join(pending) + "]}")


def _id_list(body: dict, key: str) -> list[str] | None:
    if key not in body:
        return None
    ids = body[key]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadRequest(400, "invalid_request", f"'{key}' must be a list of prompt ids")
    return ids


@expects_json
async def post_queue(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json_object(request)
    deleted: list[str] = []
    if body.get("clear") is True:
        deleted += state.store.delete_pending(None)
    ids = _id_list(body, "delete")
    if ids:
        deleted += state.store.delete_pending(ids)
    state.worker.forget(deleted)
    if deleted:
        state.notify_queue()
    return web.Response(status=200)  # empty, as ComfyUI answers (so are /interrupt, /free, /history)


@expects_json
async def post_interrupt(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json_object(request, optional=True)
    prompt_id = body.get("prompt_id")
    if prompt_id is not None and not isinstance(prompt_id, str):
        raise BadRequest(400, "invalid_request", "'prompt_id' must be a string")
    state.worker.interrupt(prompt_id)
    return web.Response(status=200)


@expects_json
async def post_free(request: web.Request) -> web.Response:
    body = await read_json_object(request, optional=True)
    unload, free = body.get("unload_models") is True, body.get("free_memory") is True
    if unload or free:
        state_of(request).worker.request_free(unload, free)
    return web.Response(status=200)


def _int_param(request: web.Request, name: str, minimum: int) -> int | None:
    """An integer query parameter within what SQLite can take (64-bit), or None when absent."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw) if len(raw) <= 24 else None
    except ValueError:
        raise BadRequest(400, "invalid_request", f"'{name}' must be an integer, got {raw[:40]!r}") from None
    if value is None or not minimum <= value < _INT64:
        raise BadRequest(400, "invalid_request", f"'{name}' must be an integer from {minimum} to {_INT64 - 1}, "
                                                 f"got {raw[:40]}")
    return value


async def get_history(request: web.Request) -> web.Response:
    store = state_of(request).store
    # ComfyUI's offset -1 (or any negative) means "no offset"
    max_items, offset = _int_param(request, "max_items", 0), _int_param(request, "offset", -_INT64)
    text = await asyncio.to_thread(store.history_text, max_items, offset)
    return raw_json_response(text)


async def get_history_entry(request: web.Request) -> web.Response:
    store = state_of(request).store
    text = await asyncio.to_thread(store.history_entry_text, request.match_info["prompt_id"])
    return raw_json_response(text)


@expects_json
async def post_history(request: web.Request) -> web.Response:
    store = state_of(request).store
    body = await read_json_object(request)
    if body.get("clear") is True:
        store.delete_history(None)
    ids = _id_list(body, "delete")
    if ids:
        store.delete_history(ids)
    return web.Response(status=200)


ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/prompt", post_prompt),
    ("GET", "/prompt", get_prompt),
    ("GET", "/queue", get_queue),
    ("POST", "/queue", post_queue),
    ("POST", "/interrupt", post_interrupt),
    ("POST", "/free", post_free),
    ("GET", "/history", get_history),
    ("GET", "/history/{prompt_id}", get_history_entry),
    ("POST", "/history", post_history),
]
