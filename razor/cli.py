"""razorctl: submit, render, watch and cancel RazorJobs.

    razorctl submit job.yaml              create it on Kubernetes (current kubeconfig context)
    razorctl submit --local job.yaml      run it on this machine, one torchrun per node
    razorctl submit --local --node-rank N --master-addr HOST job.yaml
                                          run node N of it here (machines without a scheduler)
    razorctl submit --slurm [--sweep K=V1,V2] job.yaml
                                          an sbatch job (a job array for a sweep)
    razorctl render [--local] job.yaml    print exactly what submit would create or run
    razorctl status|logs|cancel|wait NAME a job on Kubernetes (--slurm JOB: on SLURM; --local)
    razorctl list                         the jobs of a namespace (-A: of every namespace)
    razorctl validate job.yaml            check a RazorJob without running anything

Every command but validate is one method of the chosen backend (razor.backends.Backend).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .backends import Backend, Refused, get
from .spec import SpecError, load_job

EXIT_INVALID = 2


def backend(args: argparse.Namespace) -> Backend:
    """The backend the command line names (--slurm, --local, else Kubernetes), with its options."""
    name = "slurm" if getattr(args, "slurm", False) else "local" if getattr(args, "local", False) else "kubernetes"
    node_rank, master_addr = getattr(args, "node_rank", None), getattr(args, "master_addr", None)
    sweep = getattr(args, "sweep", None) or []
    if (node_rank is not None or master_addr) and name != "local":
        raise Refused("--node-rank and --master-addr run one node of a job on this machine: use them with --local")
    if node_rank is not None and not master_addr and node_rank != 0:
        raise Refused("--node-rank needs --master-addr HOST (the address of the machine that runs node 0)")
    if sweep and name != "slurm":
        raise Refused("--sweep makes a SLURM job array: use it with --slurm")
    options = {"node_rank": node_rank, "master_addr": master_addr} if name == "local" else {}
    if name == "slurm":
        options["sweep"] = sweep
    return get(name, cwd=Path.cwd(), namespace=getattr(args, "namespace", None),
               kubeconfig=getattr(args, "kubeconfig", None), context=getattr(args, "context", None),
               defaults_from=getattr(args, "defaults_from", None), **options)


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
    sys.stdout.write(backend(args).render(job, args.file, args.output))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    return backend(args).submit(load_job(args.file), args.file)


def cmd_status(args: argparse.Namespace) -> int:
    return backend(args).status(args.name, args.output)


def cmd_list(args: argparse.Namespace) -> int:
    return backend(args).list(args.all_namespaces, args.output)


def cmd_logs(args: argparse.Namespace) -> int:
    return backend(args).logs(args.name, args.rank, args.follow)


def cmd_cancel(args: argparse.Namespace) -> int:
    return backend(args).cancel(args.name)


def cmd_wait(args: argparse.Namespace) -> int:
    return backend(args).wait(args.name, args.timeout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="razorctl", description="Run one RazorJob on this machine, Kubernetes or SLURM.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_backend(p: argparse.ArgumentParser) -> None:
        where = p.add_mutually_exclusive_group()
        where.add_argument("--local", action="store_true", help="this machine")
        where.add_argument("--slurm", action="store_true", help="a SLURM cluster (sbatch)")
        p.add_argument("file", help="RazorJob YAML file")

    def with_cluster(p: argparse.ArgumentParser) -> None:
        p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
        p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
        p.add_argument("--context", help="kubeconfig context (default: the current one)")

    p = sub.add_parser("submit", help="start a job (Kubernetes by default; --local, --slurm)")
    with_backend(p)
    with_cluster(p)
    one_node = p.add_argument_group(
        "one node of a job on machines without a scheduler (with --local; run the same command on "
        "each machine, docs/local.md)")
    one_node.add_argument("--node-rank", type=int, metavar="N",
                          help="run only node N of the job here (0 is the master)")
    one_node.add_argument("--master-addr", metavar="HOST",
                          help="the master machine's address (required with --node-rank)")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="--slurm: a job array, one element per value (cfgOptions KEY=value), each "
                        "with its own work dir; repeat for a grid")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("render", help="print what submit would create or run, without running it")
    with_backend(p)
    with_cluster(p)
    p.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    p.add_argument("--node-rank", type=int, metavar="N", help="--local: only node N's plan")
    p.add_argument("--master-addr", metavar="HOST", help="--local: the master's address (with --node-rank)")
    p.add_argument("--defaults-from", metavar="NAMESPACE/NAME",
                   help="Kubernetes: the ConfigMap with the cluster's RazorJob defaults (default: "
                        "$RAZOR_DEFAULTS, else razor-system/razor-defaults, the chart's)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("validate", help="check a RazorJob file; print it with defaults filled")
    p.add_argument("file", help="RazorJob YAML file")
    p.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    p.set_defaults(func=cmd_validate)

    for name, func, text in (("status", cmd_status, "a job's phase, ranks and conditions"),
                             ("cancel", cmd_cancel, "delete a job with its pods"),
                             ("wait", cmd_wait, "wait until a job succeeds (exit 0) or fails (exit 1)"),
                             ("logs", cmd_logs, "a rank's output")):
        p = sub.add_parser(name, help=text)
        p.add_argument("name", help="RazorJob name (with --slurm: the job id, or its name)")
        where = p.add_mutually_exclusive_group()
        where.add_argument("--slurm", action="store_true", help="a SLURM job")
        where.add_argument("--local", action="store_true",
                           help="a job that submit --local runs on this machine")
        with_cluster(p)
        p.set_defaults(func=func)
        if name == "status":
            p.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
        if name == "wait":
            p.add_argument("--timeout", type=float, default=3600, help="seconds (default 3600)")
        if name == "logs":
            p.add_argument("-f", "--follow", action="store_true", help="keep streaming")
            p.add_argument("--rank", type=int, default=None,
                           help="node rank (default 0; with --slurm: the batch script's own log)")

    p = sub.add_parser("list", help="list jobs")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--slurm", action="store_true", help="SLURM's queue")
    where.add_argument("--local", action="store_true", help="the jobs submit --local runs on this machine")
    with_cluster(p)
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, Refused) as exc:  # a bad file, or a job that cannot start here: nothing started
        print(f"razorctl: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except RuntimeError as exc:  # KubeError and the like: a clear line, no traceback
        print(f"razorctl: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
