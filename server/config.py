"""The server's settings, read once from the command line."""
from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from app.args import REPO_ROOT

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class ServerConfig:
    hosts: list[str]
    port: int  # updated to the bound port once listening (for --port 0)
    max_upload_bytes: int
    preview_method: str = "auto"
    cors_origin: str | None = None
    web_root: Path = field(default_factory=lambda: REPO_ROOT / "web")
    preview_max_size: int = 512
    preview_interval_s: float = 0.1  # at most ~10 preview frames per second per prompt
    cpu: bool = False
    multi_user: bool = False  # per-user data, the user from the Comfy-User header

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServerConfig":
        hosts = [h.strip() for h in str(args.listen).split(",") if h.strip()] or ["127.0.0.1"]
        max_mb = getattr(args, "max_upload_size", 100)
        config = cls(hosts=hosts, port=args.port, max_upload_bytes=int(max_mb * 1024 * 1024),
                     preview_method=getattr(args, "preview_method", "auto") or "auto",
                     cors_origin=getattr(args, "enable_cors_header", None), cpu=bool(getattr(args, "cpu", False)),
                     multi_user=bool(getattr(args, "multi_user", False)))
        if getattr(args, "web_root", None) is not None:  # --front-end-root / --front-end-version
            config.web_root = args.web_root
        return config

    @property
    def loopback_only(self) -> bool:
        return all(is_loopback(h) for h in self.hosts)

    def urls(self) -> list[str]:
        """Addresses to print for the user; wildcard binds are shown as the loopback address."""
        out = []
        for host in self.hosts:
            shown = host
            if host in ("0.0.0.0", ""):
                shown = "127.0.0.1"
            elif host == "::":
                shown = "::1"
            if ":" in shown:
                shown = f"[{shown}]"
            url = f"http://{shown}:{self.port}"
            if url not in out:
                out.append(url)
        return out


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen_warning(hosts: list[str]) -> str | None:
    """The startup warning for binds that other machines can reach, or None for loopback."""
    exposed = [h for h in hosts if not is_loopback(h)]
    if not exposed:
        return None
    return (f"WARNING: listening on {', '.join(exposed)}: anyone who can reach this machine can queue "
            "prompts, upload files and read your outputs. There is no authentication; only use "
            "--listen on a network you trust.")
