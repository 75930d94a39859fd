"""razorctl: submit, render and check RazorJobs.

    razorctl submit --local job.yaml      run it on this machine, one torchrun per node
    razorctl render --local job.yaml      print exactly what submit --local would run
    razorctl validate job.yaml            check a RazorJob without running anything
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .spec import SpecError, load_job

EXIT_INVALID = 2


def _backend(args: argparse.Namespace) -> str:
    if args.slurm:
        return "slurm"
    if args.local:
        return "local"
    return "kubernetes"


def _unavailable(backend: str) -> int:
    print(f"razorctl: error: the {backend} backend is not part of this razor version yet; "
          "use --local to run on this machine", file=sys.stderr)
    return EXIT_INVALID


def cmd_validate(args: argparse.Namespace) -> int:
    job = load_job(args.file)
    if args.output == "text":
        print(f"{args.file}: valid RazorJob {job.name!r}")
    else:
        _dump(job.to_dict(), args.output)
    return 0


def _dump(doc: dict, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(doc, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(doc, sort_keys=False), end="")


def cmd_render(args: argparse.Namespace) -> int:
    job = load_job(args.file)
    backend = _backend(args)
    if backend != "local":
        return _unavailable(backend)
    from .backends import local

    cwd = Path.cwd()
    config = local.check(job, cwd, args.file)
    port = local.fixed_port(job, config)
    p = local.plan(job, cwd, port if port is not None else local.free_port(),
                   "fixed" if port is not None else "auto")
    sys.stdout.write(local.render(p, args.output))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    job = load_job(args.file)
    backend = _backend(args)
    if backend != "local":
        return _unavailable(backend)
    from .backends import local

    try:
        return local.submit(job, Path.cwd(), args.file)
    except local.PortInUse as exc:
        print(f"razorctl: error: {exc}", file=sys.stderr)
        return EXIT_INVALID


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="razorctl", description="Run one RazorJob on this machine, Kubernetes or SLURM.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_backend(p: argparse.ArgumentParser) -> None:
        where = p.add_mutually_exclusive_group()
        where.add_argument("--local", action="store_true", help="this machine")
        where.add_argument("--slurm", action="store_true", help="a SLURM cluster (sbatch)")
        p.add_argument("file", help="RazorJob YAML file")

    p = sub.add_parser("submit", help="start a job (Kubernetes by default; --local, --slurm)")
    with_backend(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("render", help="print what submit would create or run, without running it")
    with_backend(p)
    p.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("validate", help="check a RazorJob file; print it with defaults filled")
    p.add_argument("file", help="RazorJob YAML file")
    p.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:
        print(f"razorctl: error: {exc}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
