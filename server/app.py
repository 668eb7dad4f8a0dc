"""Wiring: the state object, the aiohttp application and its routes, and `serve(args)`."""
from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import shutil
import signal
import sys
from pathlib import Path

from aiohttp import web

from app.runtime import Runtime, create_runtime
from server import (routes_files, routes_frontend, routes_info, routes_internal, routes_models, routes_prompt,
                    routes_settings, routes_user)
from server.config import ServerConfig, listen_warning
from server.logbuffer import LogBuffer
from server.preview import Previewer
from server.queue import DB_NAME, PromptStore, StoreBusy
from server.routes_static import add_static_routes, cache_headers, index
from server.security import make_cors, make_error_middleware, make_guard
from server.state import STATE, ServerState, state_of
from server.userdata import UserStore
from server.worker import Worker
from server.ws import Hub

log = logging.getLogger("latentgraph.server")

API_PREFIX = "/api"


def create_state(runtime: Runtime, config: ServerConfig) -> ServerState:
    folders = runtime.env.folders
    store = PromptStore(folders.user_dir / DB_NAME)
    hub = Hub(server_flags={"supports_preview_metadata": True, "max_upload_size": config.max_upload_bytes})
    previewer = Previewer(config.preview_method, folders.model_dirs("vae_approx"), config.preview_max_size)
    state = ServerState(runtime, config, store, hub, previewer)
    state.worker = Worker(runtime.executor, store, hub, previewer, state.notify_queue_threadsafe,
                          config.preview_interval_s)
    return state


async def websocket(request: web.Request) -> web.StreamResponse:
    state = state_of(request)

    def greeting(sid: str) -> list[tuple[str, dict]]:
        messages = [("status", {"status": state.queue_status(), "sid": sid})]
        job, node = state.worker.current, state.worker.current_node
        if job is not None and job.client_id == sid and node is not None:
            # a reconnecting editor learns which node of its prompt is running
            messages.append(("executing", {"node": node, "display_node": node, "prompt_id": job.prompt_id}))
        return messages

    return await state.hub.handle(request, greeting)


API_MODULES = (routes_prompt, routes_files, routes_info, routes_user, routes_settings, routes_models, routes_frontend)


def build_app(state: ServerState, logs: LogBuffer | None = None) -> web.Application:
    """The application; its owner starts state.worker once listening (see run_server)."""
    config = state.config
    middlewares = [make_error_middleware(config), make_guard(config), cache_headers]
    if config.cors_origin:
        middlewares.insert(0, make_cors(config))
    # The application plugins saw as PromptServer.instance.app while importing (their routes and
    # middlewares are already on it); ours go first.
    plugin_server = state.runtime.plugin_server
    app = plugin_server.app
    for position, middleware in enumerate(middlewares):
        app.middlewares.insert(position, middleware)
    app[STATE] = state
    plugin_server.attach(state)
    app[routes_user.USERS] = UserStore(state.folders.user_dir, config.multi_user)
    routes_frontend.setup(app, state)
    routes_internal.setup(app, state, logs)
    for module in API_MODULES:
        for method, path, handler in module.ROUTES:
            # the stock frontend calls /api/...; older scripts call the bare paths
            for prefix in ("", API_PREFIX):
                app.router.add_route(method, prefix + path, handler)
    for method, path, handler in routes_internal.ROUTES:  # no /api twin, as in ComfyUI
        app.router.add_route(method, path, handler)
    routes_frontend.add_file_routes(app)
    for path in ("/ws", API_PREFIX + "/ws"):
        app.router.add_get(path, websocket)
    app.router.add_get("/", index)
    add_static_routes(app)

    async def on_startup(app: web.Application) -> None:
        state.hub.bind_loop(asyncio.get_running_loop())

    async def on_shutdown(app: web.Application) -> None:
        await state.hub.close_all()

    async def on_cleanup(app: web.Application) -> None:
        await asyncio.to_thread(state.worker.stop)
        state.store.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def wipe_temp(folder: Path) -> None:
    """temp/ holds previews of past sessions only; ComfyUI empties it at start and exit too."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as exc:
            log.warning("cannot remove %s from the temp folder: %s", entry, exc)


async def _listen(runner: web.AppRunner, config: ServerConfig) -> list[str]:
    """Bind every --listen address; returns problems. With --port 0 the first bind picks the port."""
    problems = []
    for host in config.hosts:
        site = web.TCPSite(runner, host, config.port)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                problems.append(f"port {config.port} on {host} is already in use (another server running? "
                                "pick one with --port)")
            else:
                problems.append(f"cannot listen on {host}:{config.port}: {exc.strerror or exc}")
            continue
        if config.port == 0 and runner.addresses:
            config.port = runner.addresses[0][1]
    return problems


async def run_server(runtime: Runtime, config: ServerConfig, logs: LogBuffer | None = None) -> int:
    try:
        state = create_state(runtime, config)
    except StoreBusy as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    # only once the queue lock says no other server shares these folders
    wipe_temp(runtime.env.folders.temp_dir)
    if state.store.recovered:
        log.warning("%d prompt(s) were running when the server last stopped; they will run again",
                    len(state.store.recovered))
    app = build_app(state, logs)
    access_log = logging.getLogger("aiohttp.access") if log.isEnabledFor(logging.DEBUG) else None
    runner = web.AppRunner(app, access_log=access_log, handle_signals=False)
    await runner.setup()
    try:
        problems = await _listen(runner, config)
        if problems and not runner.addresses:
            for problem in problems:
                print(f"error: {problem}", file=sys.stderr, flush=True)
            return 1
        for problem in problems:
            log.warning("%s", problem)
        # started only now: a server that cannot bind must not pick up (and cut short) a prompt
        state.worker.start()
        warning = listen_warning(config.hosts)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        urls = config.urls()
        print(f"Starting server\n\nTo see the GUI go to: {urls[0]}", flush=True)
        for url in urls[1:]:
            print(f"To see the GUI go to: {url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-POSIX loops
                pass
        await stop.wait()
        print("Stopping server", file=sys.stderr, flush=True)
        return 0
    finally:
        await runner.cleanup()
        wipe_temp(runtime.env.folders.temp_dir)


def serve(args: argparse.Namespace) -> int:
    """`python main.py`: start the engine and serve until interrupted; returns the exit code."""
    logs = LogBuffer().capture()  # before anything prints: the frontend's terminal shows start-up too
    try:
        runtime = create_runtime(args, log=lambda msg: print(msg, file=sys.stderr, flush=True))
        config = ServerConfig.from_args(args)
        return asyncio.run(run_server(runtime, config, logs))
    except KeyboardInterrupt:
        return 0
    finally:
        logs.release()
