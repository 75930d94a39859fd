"""razor-operator: watch RazorJobs and run each as a gang of pods.

    razor-operator [--namespace NS ...] [--liveness URL] [--metrics-port N] [--standalone|--peering NAME]
                   [--progress-port N --progress-url URL]

In a cluster it uses the pod's service account; elsewhere the current kubeconfig context
(or ``--kubeconfig``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any
from urllib.parse import urlsplit

import kopf
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from razor.crd import PLURAL
from razor.spec import CLUSTER_DEFAULT_KEYS, GROUP, VERSION, SpecError, parse_cluster_defaults

from . import server
from .handlers import reconcile, register
from .progress import Receiver
from .world import World
from .ports import PortIndex
from .reconcile import FINISHED


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="razor-operator", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                   help="watch only this namespace (repeatable); default: all namespaces")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--liveness", metavar="URL", default=None,
                   help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0: off)")
    p.add_argument("--metrics-address", default="0.0.0.0", help="address of the metrics server")
    p.add_argument("--progress-port", type=int, default=0,
                   help="receive the pods' progress reports (POST /progress) on this port (0: off; the "
                        "same port as --metrics-port shares its server)")
    p.add_argument("--progress-address", default="0.0.0.0", help="address of the progress endpoint")
    p.add_argument("--progress-url", metavar="URL",
                   help="where the pods reach that endpoint, e.g. http://razor-operator.razor-system.svc:8090/progress "
                        "(their RAZOR_PROGRESS_URL); unset: the pods report no progress to the operator")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--standalone", action="store_true", default=True,
                       help="run alone, without peering (the default)")
    group.add_argument("--peering", metavar="NAME",
                       help="coordinate with other operator replicas through this KopfPeering")
    p.add_argument("--host-port-range", default="29500-32767", metavar="FIRST-LAST",
                   help="ports to allocate for hostNetwork jobs")
    p.add_argument("--workers", type=int, default=32, help="concurrent pod creations")
    p.add_argument("--handler-threads", type=int, default=16,
                   help="threads running handlers (a job's events coalesce, so few are needed)")
    p.add_argument("--defaults", metavar="FILE",
                   help="YAML mapping of spec fields to values for the jobs that leave them out; its "
                        f"keys: {', '.join(CLUSTER_DEFAULT_KEYS)} (cpuImage: the image of the CPU jobs, "
                        "gpusPerNode 0, that name none)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every handler call")
    args = p.parse_args(argv)
    args.job_defaults = {}
    if args.defaults:
        try:
            with open(args.defaults, encoding="utf-8") as f:
                args.job_defaults = parse_cluster_defaults(yaml.safe_load(f), f"--defaults {args.defaults}")
        except (OSError, yaml.YAMLError) as exc:
            p.error(f"--defaults {args.defaults}: cannot read it: {exc}")
        except SpecError as exc:
            p.error(str(exc))
    try:
        first, last = (int(x) for x in args.host_port_range.split("-"))
        PortIndex(first, last)
    except ValueError as exc:
        p.error(f"--host-port-range {args.host_port_range!r}: {exc}")
    args.port_range = (first, last)
    if args.progress_url:
        url = urlsplit(args.progress_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            p.error(f"--progress-url {args.progress_url!r}: expected http(s)://HOST[:PORT]/progress")
    for flag in ("metrics_port", "progress_port"):
        if not 0 <= getattr(args, flag) <= 65535:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected a port, 0 to 65535")
    return args


def load_kube(kubeconfig: str | None) -> client.ApiClient:
    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)
    cfg.connection_pool_maxsize = 64
    return client.ApiClient(cfg)


def rebuild_ports(api: client.ApiClient, ports: PortIndex, namespaces: list[str]) -> None:
    """The ports that live hostNetwork jobs hold, from their status: a restart loses none."""
    custom = client.CustomObjectsApi(api)
    lists: list[dict[str, Any]] = []
    try:
        if namespaces:
            for ns in namespaces:
                lists.append(custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL))
        else:
            lists.append(custom.list_cluster_custom_object(GROUP, VERSION, PLURAL))
    except ApiException as exc:
        logging.getLogger("razor.operator").warning("cannot list RazorJobs to rebuild ports: %s", exc.reason)
        return
    for items in lists:
        for job in items.get("items", []):
            status = job.get("status") or {}
            if (job.get("spec") or {}).get("hostNetwork") and status.get("port") \
                    and status.get("phase") not in FINISHED:
                ports.allocate(job["metadata"]["namespace"], job["metadata"]["name"], int(status["port"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf logs in from the same file
    api = load_kube(args.kubeconfig)
    ports = PortIndex(*args.port_range)
    rebuild_ports(api, ports, args.namespace)
    world = World(api, ports, workers=args.workers, defaults=args.job_defaults, reconcile=reconcile,
                  progress_url=args.progress_url)
    world.trimmer.start()
    register(world)

    @kopf.on.login()
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The kubernetes library fixes its default kubeconfig path when it is imported, so a
        # --kubeconfig given here must be handed to kopf explicitly (KUBECONFIG is set above).
        if args.kubeconfig:
            return kopf.login_with_kubeconfig(**kwargs)
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.ERROR        # our own Events only, not every log line
        settings.execution.max_workers = args.handler_threads
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60

    endpoints = []
    if args.metrics_port:
        endpoints.append((args.metrics_address, args.metrics_port, {("GET", "/metrics"): server.metrics_route}))
    if args.progress_port:
        route = server.progress_route(Receiver(world.api))
        endpoints.append((args.progress_address, args.progress_port, {("POST", "/progress"): route}))
    server.serve(endpoints)
    print(json.dumps({"razor-operator": "starting", "namespaces": args.namespace or "all",
                      "liveness": args.liveness, "metrics_port": args.metrics_port or None,
                      "progress_port": args.progress_port or None, "progress_url": args.progress_url,
                      "defaults": args.job_defaults}),
          flush=True)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.peering is None,
        peering_name=args.peering,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
