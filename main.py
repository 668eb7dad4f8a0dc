"""LatentGraph entry point: `python main.py` serves; `python main.py run WORKFLOW ...` runs files;
`python main.py train DATASET --checkpoint CKPT --output LORA` trains a LoRA."""
from __future__ import annotations

import sys

from app.args import parse_args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # its own flags (see app/train_cli.py)
        from app.train_cli import main as train

        return train(argv[1:])
    args = parse_args(argv)
    if args.command and args.command[0] == "run":
        from app.cli import run_workflows
        from app.runtime import create_runtime

        runtime = create_runtime(args, log=lambda msg: print(msg, file=sys.stderr))
        return run_workflows(runtime, args.command[1:])
    if args.command:
        print(f"main.py: unknown command {args.command[0]!r}; the commands are 'run' and 'train'", file=sys.stderr)
        return 2
    from server.app import serve

    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
