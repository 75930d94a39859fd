"""razorctl: submit, render, watch and cancel RazorJobs.

    razorctl submit job.yaml              create it on Kubernetes (current kubeconfig context)
    razorctl submit --local job.yaml      run it on this machine, one torchrun per node
    razorctl render [--local] job.yaml    print exactly what submit would create or run
    razorctl status|logs|cancel|wait NAME a job on Kubernetes
    razorctl list                         the jobs of a namespace (-A: of every namespace)
    razorctl validate job.yaml            check a RazorJob without running anything
"""

from __future__ import annotations

import argparse
import json
import os
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


def _cluster(args: argparse.Namespace):
    from .backends.kubernetes import Cluster

    cluster = Cluster(args.kubeconfig, args.context)
    return cluster, args.namespace or cluster.namespace


def cmd_render(args: argparse.Namespace) -> int:
    job = load_job(args.file)
    backend = _backend(args)
    if backend == "slurm":
        from . import slurm
        from .backends import local

        config = local.check(job, Path.cwd(), args.file)
        sys.stdout.write(slurm.render(job, str(Path.cwd()), sys.executable, config))
        return 0
    if backend == "kubernetes":
        from .backends import kubernetes

        fmt = "json" if args.output == "json" else "yaml"
        # The namespace as submit picks it, and the cluster's defaults as the operator applies them.
        try:
            cluster, ns = _cluster(args)
            defaults, note = cluster.defaults(args.defaults_from or os.environ.get(kubernetes.DEFAULTS_ENV)
                                              or kubernetes.DEFAULTS_LOCATION)
        except kubernetes.KubeError as exc:
            if args.defaults_from:
                raise
            ns, defaults, note = "default", {}, f"{exc}; showing razor's own defaults"
        if note:
            print(f"razorctl: note: {note}", file=sys.stderr)
        sys.stdout.write(kubernetes.render(job, args.namespace or job.metadata.namespace or ns, fmt, defaults))
        return 0
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
    if backend == "slurm":
        from .backends import local, slurm

        config = local.check(job, Path.cwd(), args.file)
        job_id = slurm.submit(job, Path.cwd(), config)
        print(f"razor: submitted RazorJob {job.name} as SLURM job {job_id}; logs in "
              f"{job.spec.work_dir}/logs/")
        print(f"  razorctl status --slurm {job_id}    razorctl logs --slurm -f {job_id}")
        return 0
    if backend == "kubernetes":
        cluster, ns = _cluster(args)
        ns = args.namespace or job.metadata.namespace or ns
        cluster.submit(job, ns)
        print(f"razorjob.razor.dev/{job.name} created in namespace {ns}")
        print(f"  razorctl status {job.name} -n {ns}    razorctl logs -f {job.name} -n {ns}")
        return 0
    from .backends import local

    try:
        return local.submit(job, Path.cwd(), args.file)
    except local.PortInUse as exc:
        print(f"razorctl: error: {exc}", file=sys.stderr)
        return EXIT_INVALID


def cmd_status(args: argparse.Namespace) -> int:
    if args.slurm:
        from .backends import slurm

        st = slurm.status(slurm.find(args.name))
        print(json.dumps(st.__dict__) if args.output == "json" else st.describe())
        return 0
    from .backends import kubernetes

    cluster, ns = _cluster(args)
    obj = cluster.get(args.name, ns)
    if args.output == "text":
        sys.stdout.write(kubernetes.describe(obj))
    else:
        kubernetes.dump(obj, args.output)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.slurm:
        from .backends import slurm

        sys.stdout.write(slurm.jobs())
        return 0
    from .backends import kubernetes

    cluster, ns = _cluster(args)
    items = cluster.list(None if args.all_namespaces else ns)
    if args.output == "text":
        sys.stdout.write(kubernetes.table(items, args.all_namespaces))
    else:
        kubernetes.dump({"apiVersion": "v1", "kind": "List", "items": items}, args.output)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    if args.slurm:
        from .backends import slurm

        slurm.logs(slurm.find(args.name), args.rank, args.follow, sys.stdout)
        return 0
    cluster, ns = _cluster(args)
    cluster.logs(args.name, ns, args.rank or 0, args.follow, sys.stdout)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    if args.slurm:
        from .backends import slurm

        job_id = slurm.find(args.name)
        slurm.cancel(job_id)
        print(f"SLURM job {job_id} cancelled")
        return 0
    cluster, ns = _cluster(args)
    cluster.cancel(args.name, ns)
    print(f"razorjob.razor.dev/{args.name} deleted (its pods and service go with it)")
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    if args.slurm:
        from .backends import slurm

        st = slurm.wait(slurm.find(args.name), args.timeout)
        print(st.describe())
        return 0 if st.phase == "Succeeded" else 1
    from .backends import kubernetes

    cluster, ns = _cluster(args)
    obj = cluster.wait(args.name, ns, args.timeout)
    sys.stdout.write(kubernetes.describe(obj))
    return 0 if obj["status"]["phase"] == "Succeeded" else 1


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
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("render", help="print what submit would create or run, without running it")
    with_backend(p)
    with_cluster(p)
    p.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
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
        p.add_argument("--slurm", action="store_true", help="a SLURM job")
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
    p.add_argument("--slurm", action="store_true", help="SLURM's queue")
    with_cluster(p)
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:
        print(f"razorctl: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except RuntimeError as exc:  # KubeError and the like: a clear line, no traceback
        print(f"razorctl: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
