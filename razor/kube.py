"""Kubernetes objects of a RazorJob: one headless Service, one pod per node, and for a gang
scheduler (spec.gang) the job's PodGroup. Pure functions.

Names are deterministic (JobSet's convention): the Service is ``<job>``, the pods
``<job>-<rank>`` with ``hostname: <job>-<rank>`` and ``subdomain: <job>``, so the master is
``<job>-0.<job>.<namespace>.svc`` before it is ready (``publishNotReadyAddresses``). A restarted
operator, or a handler run twice, computes the same names and so never makes a duplicate.
"""

from __future__ import annotations

from typing import Any

from .launcher import DEFAULT_PORT, Network, PortChoice, job_port as port_rule, node_argv, node_env
from .spec import API_VERSION, KIND, RazorJob

LABEL_JOB = "razor.dev/job-name"
LABEL_RANK = "razor.dev/node-rank"
LABEL_ATTEMPT = "razor.dev/attempt"
CONTAINER = "trainer"
SHM_VOLUME = "dshm"
#: The audience of the pods' progress token: only razor-operator accepts it (a TokenReview with
#: this audience), and the API server does not, so the token gives the pod no API rights at all.
PROGRESS_AUDIENCE = "razor-operator"
PROGRESS_VOLUME = "razor-progress"
PROGRESS_TOKEN_DIR = "/var/run/secrets/razor.dev/progress"
PROGRESS_TOKEN_FILE = f"{PROGRESS_TOKEN_DIR}/token"
#: The token's lifetime; the kubelet renews a projected token at 80 % of it.
PROGRESS_TOKEN_SECONDS = 3600
#: Where razor.node writes the failure message (the traceback's last lines, a stall): Kubernetes
#: keeps the file's contents as the container's state.terminated.message.
TERMINATION_LOG = "/dev/termination-log"
#: The NoExecute taints the node lifecycle controller puts on a node that stops answering (its
#: kubelet silent, or not ready); the taint eviction controller then evicts the pods that do not
#: tolerate them, after their ``tolerationSeconds`` (300 by default, DefaultTolerationSeconds).
NODE_LOST_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
#: The PodGroup each gang scheduler reads (spec.gang): (group, version); the kind is PodGroup and
#: the resource podgroups in all three. native: Kubernetes' own (1.36+, the GenericWorkload and
#: GangScheduling feature gates, the API group scheduling.k8s.io/v1alpha2 on); volcano: Volcano's;
#: coscheduling: the scheduler-plugins coscheduler's.
POD_GROUP_APIS = {
    "native": ("scheduling.k8s.io", "v1alpha2"),
    "volcano": ("scheduling.volcano.sh", "v1beta1"),
    "coscheduling": ("scheduling.x-k8s.io", "v1alpha1"),
}
POD_GROUP_KIND = "PodGroup"
POD_GROUP_PLURAL = "podgroups"
#: How the pods name their PodGroup: Volcano's annotation, the coscheduler's label (native: the
#: pod's spec.schedulingGroup.podGroupName).
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
COSCHEDULING_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"
VOLCANO_SCHEDULER = "volcano"


def master_addr(job: RazorJob, namespace: str) -> str:
    return f"{job.name}-0.{job.name}.{namespace}.svc"


def pod_name(job: RazorJob, rank: int) -> str:
    return f"{job.name}-{rank}"


def network(job: RazorJob) -> Network:
    """A pod has a network namespace of its own; with hostNetwork it shares its host's, and the
    operator allocates the port."""
    return Network.ALLOCATED if job.spec.host_network else Network.OWN


def port_choice(job: RazorJob, allocated: int | None = None) -> PortChoice:
    """The one port rule (razor.launcher.job_port) for the job's pods. The config is in the image,
    so only what the RazorJob says counts here: razorctl, which can read the config, sends a port
    the config fixes as spec.port (razor.backends.kubernetes)."""
    return port_rule(job, None, network(job), allocated)


def job_port(job: RazorJob, allocated: int | None = None) -> int:
    """The port the pods use: the rule's; for a hostNetwork job whose port the operator has not
    allocated yet (``razorctl render``), the first of the operator's default range."""
    choice = port_choice(job, allocated)
    return DEFAULT_PORT if choice.port is None else choice.port


def tolerations(job: RazorJob) -> list[dict[str, Any]]:
    """The spec's tolerations, then one per NODE_LOST_TAINTS key the spec does not tolerate
    itself with effect NoExecute (or any effect): a lost node's pods are evicted after
    ``nodeLostTimeoutSeconds``. A toleration of the spec's own for such a key wins, and so does
    one without a key (it comes first: the taint manager uses the first that matches)."""
    own = list(job.spec.tolerations)
    named = {t.get("key") for t in own if t.get("effect") in (None, "", "NoExecute")}
    return own + [{"key": key, "operator": "Exists", "effect": "NoExecute",
                   "tolerationSeconds": job.spec.node_lost_timeout_seconds}
                  for key in NODE_LOST_TAINTS if key not in named]


def owner_reference(job: RazorJob, uid: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": job.name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def _meta(job: RazorJob, name: str, namespace: str, uid: str | None,
          labels: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name, "namespace": namespace,
        "labels": {**job.metadata.labels, "app.kubernetes.io/managed-by": "razor", LABEL_JOB: job.name,
                   **labels},
    }
    if job.metadata.annotations:
        meta["annotations"] = dict(job.metadata.annotations)
    if uid:
        meta["ownerReferences"] = [owner_reference(job, uid)]
    return meta


def service(job: RazorJob, namespace: str, uid: str | None = None, port: int | None = None) -> dict[str, Any]:
    p = job_port(job, port)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(job, job.name, namespace, uid, {}),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: job.name},
            "ports": [{"name": "rendezvous", "port": p, "targetPort": p, "protocol": "TCP"}],
        },
    }


def progress_env(progress_url: str | None) -> dict[str, str]:
    """How razor.node reports: to ``progress_url`` (the operator's --progress-url; none, no
    reports), proving who it is with the pod's projected token; and where it leaves its failure
    message for the kubelet."""
    env = {"RAZOR_PROGRESS_URL": progress_url} if progress_url else {}
    return {**env, "RAZOR_PROGRESS_TOKEN_FILE": PROGRESS_TOKEN_FILE, "RAZOR_TERMINATION_LOG": TERMINATION_LOG}


def progress_volume() -> dict[str, Any]:
    """A ServiceAccount token bound to the pod, for the operator only (audience razor-operator):
    the operator's TokenReview tells it which pod reports, so a pod can report the progress of
    its own job and of no other, without any RBAC (unlike a token it could patch a RazorJob
    with). It expires with the pod, and the kubelet renews it while the pod runs."""
    return {"name": PROGRESS_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
        "audience": PROGRESS_AUDIENCE, "expirationSeconds": PROGRESS_TOKEN_SECONDS, "path": "token"}}]}}


def pod_group_name(job: RazorJob) -> str:
    """The job's PodGroup: one per job, named after it, kept across gang restarts."""
    return job.name


def pod_group(job: RazorJob, namespace: str, uid: str | None = None) -> dict[str, Any] | None:
    """The PodGroup the job's gang scheduler reads (spec.gang), or None for gang none: all
    ``nnodes`` pods or none of them (minCount / minMember = nnodes)."""
    gang = job.spec.gang
    if gang not in POD_GROUP_APIS:
        return None
    group, version = POD_GROUP_APIS[gang]
    n = job.spec.nnodes
    if gang == "native":
        spec: dict[str, Any] = {"schedulingPolicy": {"gang": {"minCount": n}}}
    else:  # Volcano's and the coscheduler's PodGroupSpec both call it minMember
        spec = {"minMember": n}
    return {"apiVersion": f"{group}/{version}", "kind": POD_GROUP_KIND,
            "metadata": _meta(job, pod_group_name(job), namespace, uid, {}), "spec": spec}


def _link_to_pod_group(job: RazorJob, meta: dict[str, Any], pod_spec: dict[str, Any]) -> None:
    """Name the job's PodGroup in a pod, the way its gang scheduler looks for it."""
    gang, name = job.spec.gang, pod_group_name(job)
    if gang == "native":
        pod_spec["schedulingGroup"] = {"podGroupName": name}
    elif gang == "volcano":
        meta["annotations"] = {**meta.get("annotations", {}), VOLCANO_GROUP_ANNOTATION: name}
        pod_spec.setdefault("schedulerName", VOLCANO_SCHEDULER)
    elif gang == "coscheduling":
        meta["labels"][COSCHEDULING_GROUP_LABEL] = name


def pod(job: RazorJob, rank: int, namespace: str, uid: str | None = None, attempt: int = 1,
        port: int | None = None, progress_url: str | None = None) -> dict[str, Any]:
    spec = job.spec
    p = job_port(job, port)
    env = {**node_env(job, rank, master_addr(job, namespace), p, attempt), **progress_env(progress_url)}
    resources: dict[str, dict[str, str]] = {}
    if spec.resources.requests:
        resources["requests"] = dict(spec.resources.requests)
    limits = dict(spec.resources.limits)
    if spec.gpus_per_node:
        limits["nvidia.com/gpu"] = str(spec.gpus_per_node)
    if limits:
        resources["limits"] = limits
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "command": node_argv(job)[:3],
        "args": node_argv(job)[3:],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": [{"name": "rendezvous", "containerPort": p, "protocol": "TCP"}],
        "volumeMounts": [{"name": SHM_VOLUME, "mountPath": "/dev/shm"},
                         {"name": PROGRESS_VOLUME, "mountPath": PROGRESS_TOKEN_DIR, "readOnly": True},
                         *spec.volume_mounts],
        # razor.node's message (RAZOR_TERMINATION_LOG), else the log's tail: why a rank failed
        # reaches the job's status and Events.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resources:
        container["resources"] = resources
    if spec.working_dir:
        container["workingDir"] = spec.working_dir
    shm: dict[str, Any] = {"medium": "Memory"}
    if spec.resources.shm_size:
        shm["sizeLimit"] = spec.resources.shm_size
    pod_spec: dict[str, Any] = {
        "hostname": pod_name(job, rank),
        "subdomain": job.name,
        "restartPolicy": "Never",
        # razor.node stops within it: RAZOR_STOP_GRACE is this minus a margin (razor.launcher).
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "containers": [container],
        "volumes": [{"name": SHM_VOLUME, "emptyDir": shm}, progress_volume(), *spec.volumes],
    }
    if spec.host_network:
        pod_spec["hostNetwork"] = True
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    for key, value in (("nodeSelector", spec.node_selector), ("tolerations", tolerations(job)),
                       ("affinity", spec.affinity), ("priorityClassName", spec.priority_class_name),
                       ("schedulerName", spec.scheduler_name),
                       ("serviceAccountName", spec.service_account_name),
                       ("securityContext", spec.pod_security_context)):
        if value:
            pod_spec[key] = value
    if not spec.service_account_name:
        # The trainer never calls the API (its progress token is for the operator only).
        pod_spec["automountServiceAccountToken"] = False
    labels = {LABEL_RANK: str(rank), LABEL_ATTEMPT: str(attempt)}
    meta = _meta(job, pod_name(job, rank), namespace, uid, labels)
    _link_to_pod_group(job, meta, pod_spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def objects(job: RazorJob, namespace: str, uid: str | None = None, attempt: int = 1,
            port: int | None = None, progress_url: str | None = None) -> list[dict[str, Any]]:
    """What the operator creates for a job: the Service, its PodGroup (spec.gang), then every
    rank's pod."""
    group = pod_group(job, namespace, uid)
    return [service(job, namespace, uid, port), *([group] if group else []),
            *(pod(job, r, namespace, uid, attempt, port, progress_url) for r in range(job.spec.nnodes))]
