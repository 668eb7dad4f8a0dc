"""LatentGraph entry point: `python main.py` serves; `python main.py run WORKFLOW ...` runs files."""
from __future__ import annotations

import sys

from app.args import parse_args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command and args.command[0] == "run":
        from app.cli import run_workflows
        from app.runtime import create_runtime

        runtime = create_runtime(args, log=lambda msg: print(msg, file=sys.stderr))
        return run_workflows(runtime, args.command[1:])
    if args.command:
        print(f"main.py: unknown command {args.command[0]!r}; the only command is 'run'", file=sys.stderr)
        return 2
    from server.app import serve

    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
