"""Joining (or starting) the Ray cluster and sizing the worker actors."""
from __future__ import annotations

import argparse
import copy
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import ray

from app.args import LOCAL_RAY, REPO_ROOT

log = logging.getLogger(__name__)

NAMESPACE = "latentgraph"
# run, interrupt, free and describe: the last three must reach a worker while it runs a prompt
ACTOR_CONCURRENCY = 4
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class WorkerPlan:
    count: int
    num_cpus: float
    num_gpus: float
    threads: int | None  # torch threads of a CPU worker; None on a GPU


def connect(address: str) -> None:
    """Join the cluster at `address`, or start a private one on this machine (LOCAL_RAY). A
    cluster that cannot be reached stops the program with a message (SystemExit)."""
    if ray.is_initialized():
        return
    if address == LOCAL_RAY:
        ray.init(namespace=NAMESPACE, include_dashboard=False, logging_level=logging.WARNING)
        return
    check_reachable(address)
    try:
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as exc:
        raise SystemExit(f"error: cannot join the Ray cluster at {address!r}: {exc}") from None


def check_reachable(address: str) -> None:
    """Ray retries an unreachable HOST:PORT for minutes; a closed port is told at once."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # 'auto' finds the local cluster itself; ray:// goes through Ray's client
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise SystemExit(f"error: cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
                         "(start one with `ray start --head`, or use --ray alone for a local one)") from None


def plan_workers(args: argparse.Namespace) -> WorkerPlan:
    """One worker per GPU; on a CPU-only cluster (or with --cpu) one per --ray-cpus-per-worker
    cores of each machine. --ray-workers N overrides the count."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    gpus = int(sum(r.get("GPU", 0) for r in nodes))
    if gpus and not args.cpu:
        plan = WorkerPlan(gpus, 1, 1, None)
    else:
        biggest = max((int(r.get("CPU", 0)) for r in nodes), default=1)
        cpus = max(1, min(args.ray_cpus_per_worker, biggest))
        if cpus < args.ray_cpus_per_worker:
            log.warning("no machine of the Ray cluster has %d CPUs; workers get %d each",
                        args.ray_cpus_per_worker, cpus)
        plan = WorkerPlan(max(1, sum(int(r.get("CPU", 0)) // cpus for r in nodes)), cpus, 0, cpus)
    if args.ray_workers:
        plan = WorkerPlan(args.ray_workers, plan.num_cpus, plan.num_gpus, plan.threads)
    return plan


def actor_options(plan: WorkerPlan) -> dict:
    """Ray options of a worker actor. Ray restarts a worker that dies (any number of times); the
    dispatcher, not Ray, decides whether its prompt runs again, so no task is retried."""
    # The workers import this checkout's code (a node of a multi-machine cluster needs it at the
    # same path, see docs/cluster.md), ahead of any installed copy.
    path = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "compat")])
    if os.environ.get("PYTHONPATH"):
        path += os.pathsep + os.environ["PYTHONPATH"]
    return dict(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, max_restarts=-1, max_task_retries=0,
                max_concurrency=ACTOR_CONCURRENCY, scheduling_strategy="SPREAD",
                runtime_env={"env_vars": {"PYTHONPATH": path}})


def worker_args(args: argparse.Namespace) -> argparse.Namespace:
    """The server's arguments as a worker gets them: folder paths made absolute, since a worker
    process starts elsewhere."""
    shipped = copy.copy(args)
    for name, value in vars(args).items():
        if isinstance(value, Path):
            setattr(shipped, name, value.absolute())
        elif isinstance(value, list) and value and all(isinstance(v, Path) for v in value):
            setattr(shipped, name, [v.absolute() for v in value])
    return shipped
