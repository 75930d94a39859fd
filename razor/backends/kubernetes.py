"""The Kubernetes backend of razorctl: the RazorJob object in the current kubeconfig context.

razorctl creates, reads and deletes RazorJobs; the operator does the rest. ``render`` is pure
(razor.kube); the rest is a thin layer over the API.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import yaml

from .. import kube
from ..config import ConfigError, load_config
from ..crd import PLURAL
from ..policy import FINISHED
from ..progress import Progress, line as one_line
from ..launcher import CONFIG_PORT, Network, job_port, requested_ports
from ..spec import GROUP, VERSION, RazorJob, SpecError, parse_cluster_defaults, parse_job, with_cluster_defaults
from . import Backend

#: Where the cluster's RazorJob defaults are (the ConfigMap the chart writes and razor-operator
#: --defaults reads): NAMESPACE/NAME, from --defaults-from or $RAZOR_DEFAULTS, else the chart's
#: own for the release "razor" in "razor-system". The chart lets every authenticated user read it.
DEFAULTS_ENV = "RAZOR_DEFAULTS"
DEFAULTS_LOCATION = "razor-system/razor-defaults"
DEFAULTS_KEY = "defaults.yaml"
#: The same ConfigMap's key for the operator's --progress-url (the chart writes both), so that
#: render shows the pods' RAZOR_PROGRESS_URL as the operator sets it.
PROGRESS_URL_KEY = "progress-url"


class KubeError(RuntimeError):
    pass


def with_defaults(job: RazorJob, defaults: dict[str, Any]) -> RazorJob:
    """The job as the operator sees it: what it sends (``to_dict(cluster_defaults=True)``) with
    the cluster's defaults filled in, exactly as razor-operator --defaults does."""
    if not defaults:
        return job
    doc = with_cluster_defaults(job.to_dict(cluster_defaults=True), defaults)
    return parse_job(doc, f"RazorJob {job.name} with the cluster's defaults")


def with_config_port(job: RazorJob, cwd: Path) -> RazorJob:
    """The job with the port its config fixes (``dist_params.port``, the seed's Option 1) as
    ``spec.port``, when the config is here to read (relative to ``cwd``, as in the image's working
    directory) and the job itself fixes none: the one port rule counts the config's port on every
    backend, but the operator cannot read a config that is in the image, so razorctl sends it.
    (Not for hostNetwork, where the operator's allocation wins.)"""
    path = cwd / job.spec.config if job.spec.config else None
    if path is None or job.spec.host_network or "port" in job.spec.model_fields_set or not path.is_file():
        return job
    try:
        config = load_config(path)
    except ConfigError:
        return job  # not one the trainer could read either: the image's is what counts
    choice = job_port(job, config, Network.OWN)
    if choice.field != CONFIG_PORT:
        return job
    doc = job.to_dict(cluster_defaults=True)
    doc["spec"]["port"] = choice.port
    return parse_job(doc, f"RazorJob {job.name}")


def port_note(job: RazorJob) -> str | None:
    """What to tell the user of a hostNetwork job that fixes a port: the operator's allocation wins."""
    if not job.spec.host_network:
        return None
    fixed = next(((where, port) for where, port in requested_ports(job) if port is not None), None)
    if fixed is None:
        return "hostNetwork: the operator allocates the job's port when it creates the pods (status.port)"
    return (f"hostNetwork: {fixed[0]} ({fixed[1]}) is not used; the operator allocates a port no other "
            "hostNetwork job uses (status.port)")


def render(job: RazorJob, namespace: str, fmt: str = "yaml", defaults: dict[str, Any] | None = None,
           progress_url: str | None = None) -> str:
    """The Service, the PodGroup (spec.gang) and the pods the operator would create (attempt 1,
    before a uid exists), with the cluster's ``defaults`` for the fields the job leaves out and
    its ``progress_url``."""
    objs = kube.objects(with_defaults(job, defaults or {}), namespace, progress_url=progress_url)
    if fmt == "json":
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}, indent=2) + "\n"
    return yaml.safe_dump_all(objs, sort_keys=False)


class Cluster:
    def __init__(self, kubeconfig: str | None = None, context: str | None = None):
        from kubernetes import client, config

        try:
            contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        except (config.ConfigException, FileNotFoundError, TypeError) as exc:
            raise KubeError(f"no usable kubeconfig ({exc}); set KUBECONFIG or use --local") from None
        ctx = next((c for c in contexts if c["name"] == context), active) if context else active
        self.namespace = (ctx.get("context") or {}).get("namespace") or "default"
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
        self.api = client.ApiClient(cfg)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    def _call(self, what: str, fn, *args: Any, **kw: Any) -> Any:
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kw)
        except ApiException as exc:
            detail = exc.reason
            try:
                detail = json.loads(exc.body).get("message", detail)
            except (TypeError, ValueError):
                pass
            raise KubeError(f"{what}: {detail}") from None
        except HTTPError as exc:
            raise KubeError(f"{what}: cannot reach the API server ({exc})") from None

    def defaults(self, location: str) -> tuple[dict[str, Any], str | None, str | None]:
        """The cluster's RazorJob defaults from the ConfigMap ``location`` (NAMESPACE/NAME), a
        note for the user when there are none to read (then razor's own defaults apply), and the
        operator's progress URL where the ConfigMap has it."""
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        ns, _, name = location.partition("/")
        if not ns or not name:
            raise KubeError(f"--defaults-from {location!r}: expected NAMESPACE/NAME of a ConfigMap")
        try:
            cm = self.core.read_namespaced_config_map(name, ns)
        except ApiException as exc:
            why = {403: "not allowed to read it", 404: "no such ConfigMap"}.get(exc.status, exc.reason)
            return {}, f"the cluster's RazorJob defaults ({location}): {why}; showing razor's own defaults", None
        except HTTPError as exc:
            return {}, f"cannot reach the API server ({exc}); showing razor's own defaults", None
        data = cm.data or {}
        text, url = data.get(DEFAULTS_KEY), data.get(PROGRESS_URL_KEY) or None
        if text is None:
            return {}, f"ConfigMap {location} has no {DEFAULTS_KEY}; showing razor's own defaults", url
        try:
            return parse_cluster_defaults(yaml.safe_load(text), f"ConfigMap {location}"), None, url
        except (SpecError, yaml.YAMLError) as exc:
            raise KubeError(f"the cluster's RazorJob defaults in ConfigMap {location} are invalid:\n{exc}") from None

    def submit(self, job: RazorJob, namespace: str) -> dict[str, Any]:
        body = job.to_dict(cluster_defaults=True)  # what the job leaves out, the cluster fills in
        body["metadata"]["namespace"] = namespace
        return self._call(f"creating RazorJob {namespace}/{job.name}",
                          self.custom.create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, body)

    def get(self, name: str, namespace: str) -> dict[str, Any]:
        return self._call(f"RazorJob {namespace}/{name}", self.custom.get_namespaced_custom_object,
                          GROUP, VERSION, namespace, PLURAL, name)

    def list(self, namespace: str | None) -> list[dict[str, Any]]:
        if namespace is None:
            out = self._call("listing RazorJobs", self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        else:
            out = self._call("listing RazorJobs", self.custom.list_namespaced_custom_object,
                             GROUP, VERSION, namespace, PLURAL)
        return out.get("items", [])

    def cancel(self, name: str, namespace: str) -> None:
        self._call(f"deleting RazorJob {namespace}/{name}", self.custom.delete_namespaced_custom_object,
                   GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background")

    def logs(self, name: str, namespace: str, rank: int, follow: bool, out: IO[str]) -> None:
        pod = f"{name}-{rank}"
        resp = self._call(f"logs of pod {namespace}/{pod}", self.core.read_namespaced_pod_log, pod, namespace,
                          container=kube.CONTAINER, follow=follow, _preload_content=False)
        for chunk in resp.stream(4096):
            out.write(chunk.decode(errors="replace"))
            out.flush()

    def wait(self, name: str, namespace: str, timeout: float, interval: float = 1.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(name, namespace)
            if (obj.get("status") or {}).get("phase") in FINISHED:
                return obj
            if time.monotonic() > deadline:
                raise KubeError(f"RazorJob {namespace}/{name} did not finish within {timeout:g}s")
            time.sleep(interval)


def _age(ts: str | None) -> str:
    if not ts:
        return "-"
    then = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    secs = int((datetime.now(timezone.utc) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def table(items: list[dict[str, Any]], all_namespaces: bool) -> str:
    rows = [["NAMESPACE"] if all_namespaces else []]
    rows[0] += ["NAME", "PHASE", "NODES", "GPUS", "RUNNING", "RESTARTS", "COUNTED", "AGE"]
    for it in items:
        st, sp, md = it.get("status") or {}, it.get("spec") or {}, it["metadata"]
        row = [md["namespace"]] if all_namespaces else []
        row += [md["name"], st.get("phase", "-"), str(sp.get("nnodes", "-")), str(sp.get("gpusPerNode", "-")),
                str((st.get("ranksByPhase") or {}).get("running", 0)), str(st.get("restarts", 0)),
                str(st.get("countedRestarts", st.get("restarts", 0))), _age(md.get("creationTimestamp"))]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"


def _indented(text: str, indent: str) -> str:
    """A message of several lines (a traceback's last lines) under its label."""
    return ("\n" + indent).join(str(text).splitlines() or [""])


def progress_line(status: dict[str, Any], tty: bool = False, now: float | None = None) -> str | None:
    """The job's progress as rank 0 last reported it (status.progress): a bar and one line on a
    terminal, the line alone otherwise; None before any report."""
    doc = status.get("progress")
    if not doc:
        return None
    try:
        p = Progress.from_status(doc)
    except ValueError:
        return None
    text = one_line(p, tty, now)
    attempt = doc.get("attempt")
    if attempt and attempt != status.get("attempt", attempt):
        text += f" (attempt {attempt})"
    return text


def describe(obj: dict[str, Any], tty: bool = False, now: float | None = None) -> str:
    md, st = obj["metadata"], obj.get("status") or {}
    lines = [f"RazorJob {md['namespace']}/{md['name']}: {st.get('phase', 'not yet seen by the operator')}"]
    progress = progress_line(st, tty, now)
    if progress:
        lines.append(f"  progress: {progress}")
    if st.get("message"):
        lines.append(f"  message:  {_indented(st['message'], ' ' * 12)}")
    restarts = st.get("restarts", 0)
    counted = st.get("countedRestarts", restarts)
    lines.append(f"  attempt:  {st.get('attempt', 1)}, restarts: {restarts} (counted {counted}, "
                 f"disruptions {st.get('disruptionRestarts', restarts - counted)})")
    if st.get("ranksByPhase"):
        by = st["ranksByPhase"]
        lines.append("  ranks:    " + ", ".join(f"{by.get(k, 0)} {k}"
                                                for k in ("running", "pending", "succeeded", "failed")))
    for key in ("nextAttemptTime", "startTime", "completionTime", "port"):
        if st.get(key):
            lines.append(f"  {key}: {st[key]}")
    for rank in st.get("ranks") or []:
        code = f" exit code {rank['exitCode']}" if "exitCode" in rank else ""
        why = f" ({rank['reason']})" if rank.get("reason") else ""
        node = f" on node {rank['node']}" if rank.get("node") else ""
        lines.append(f"  rank {rank['rank']}: {rank.get('pod', '')} {rank.get('phase', '')}{code}{why}{node}")
    for f in st.get("failedRanks") or []:
        code = f" exit code {f['exitCode']}" if f.get("exitCode") is not None else ""
        why = f" ({f['reason']})" if f.get("reason") else ""
        kind = f" [{f['class']}]" if f.get("class") else ""
        node = f" on node {f['node']}" if f.get("node") else ""
        msg = f": {_indented(f['message'], ' ' * 4)}" if f.get("message") else ""
        lines.append(f"  failed: rank {f['rank']} (attempt {f.get('attempt', '?')}){code}{why}{kind}{node}{msg}")
    for cond in st.get("conditions") or []:
        lines.append(f"  condition {cond['type']}={cond['status']} ({cond.get('reason', '')}) "
                     f"{_indented(cond.get('message', ''), ' ' * 4)}".rstrip())
    return "\n".join(lines) + "\n"


def dump(obj: Any, fmt: str, out: IO[str] = sys.stdout) -> None:
    out.write(json.dumps(obj, indent=2) + "\n" if fmt == "json" else yaml.safe_dump(obj, sort_keys=False))


class KubernetesBackend(Backend):
    """The default backend: the RazorJob object in a namespace of the current kubeconfig context
    (``namespace``, ``kubeconfig``, ``context`` as razorctl's -n, --kubeconfig, --context);
    razor-operator does the rest."""

    name = "kubernetes"

    def __init__(self, cwd: Path | None = None, out: IO[str] | None = None, err: IO[str] | None = None,
                 namespace: str | None = None, kubeconfig: str | None = None, context: str | None = None,
                 defaults_from: str | None = None, **other: object):
        super().__init__(cwd, out, err, **other)
        self.namespace, self.kubeconfig, self.context = namespace, kubeconfig, context
        self.defaults_from = defaults_from
        self._cluster: Cluster | None = None

    def cluster(self) -> tuple[Cluster, str]:
        """The API server, and the namespace: -n, else the context's."""
        if self._cluster is None:
            self._cluster = Cluster(self.kubeconfig, self.context)
        return self._cluster, self.namespace or self._cluster.namespace

    def _prepare(self, job: RazorJob) -> RazorJob:
        job = with_config_port(job, self.cwd)
        note = port_note(job)
        if note:
            self.note(note)
        return job

    def render(self, job: RazorJob, source: str, fmt: str = "text") -> str:
        job = self._prepare(job)
        # The namespace as submit picks it, and the cluster's defaults as the operator applies them.
        try:
            cluster, ns = self.cluster()
            defaults, note, progress_url = cluster.defaults(self.defaults_from or os.environ.get(DEFAULTS_ENV)
                                                            or DEFAULTS_LOCATION)
        except KubeError as exc:
            if self.defaults_from:
                raise
            ns, defaults, note, progress_url = "default", {}, f"{exc}; showing razor's own defaults", None
        if note:
            self.note(note)
        return render(job, self.namespace or job.metadata.namespace or ns, "json" if fmt == "json" else "yaml",
                      defaults, progress_url)

    def submit(self, job: RazorJob, source: str) -> int:
        job = self._prepare(job)
        cluster, ns = self.cluster()
        ns = self.namespace or job.metadata.namespace or ns
        cluster.submit(job, ns)
        self.say(f"razorjob.razor.dev/{job.name} created in namespace {ns}")
        self.say(f"  razorctl status {job.name} -n {ns}    razorctl logs -f {job.name} -n {ns}")
        return 0

    def status(self, ref: str, fmt: str = "text") -> int:
        cluster, ns = self.cluster()
        obj = cluster.get(ref, ns)
        if fmt == "text":
            self.out.write(describe(obj, tty=getattr(self.out, "isatty", lambda: False)()))
        else:
            dump(obj, fmt, self.out)  # status.progress as the operator stored it
        return 0

    def list(self, all_namespaces: bool = False, fmt: str = "text") -> int:
        cluster, ns = self.cluster()
        items = cluster.list(None if all_namespaces else ns)
        if fmt == "text":
            self.out.write(table(items, all_namespaces))
        else:
            dump({"apiVersion": "v1", "kind": "List", "items": items}, fmt, self.out)
        return 0

    def logs(self, ref: str, rank: int | None, follow: bool) -> int:
        cluster, ns = self.cluster()
        cluster.logs(ref, ns, rank or 0, follow, self.out)
        return 0

    def cancel(self, ref: str) -> int:
        cluster, ns = self.cluster()
        cluster.cancel(ref, ns)
        self.say(f"razorjob.razor.dev/{ref} deleted (its pods and service go with it)")
        return 0

    def wait(self, ref: str, timeout: float) -> int:
        cluster, ns = self.cluster()
        obj = cluster.wait(ref, ns, timeout)
        self.out.write(describe(obj))
        return 0 if obj["status"]["phase"] == "Succeeded" else 1
