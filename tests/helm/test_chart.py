"""The Helm chart charts/razor with the real helm (scripts/helm-binary.sh builds it).

Without a cluster: ``helm lint``, ``helm template`` with default and non-default values (what the
objects say: the Deployment's strategy, securityContext and args, the RBAC rules exactly),
values.schema.json's refusals, the CRD as a symbolic link to crds/razorjob.yaml.

Against a real control plane (tests/kube_cluster.py; no kubelet, no scheduler, no Deployment
controller: the operator's Deployment never gets a pod, as expected): ``helm install``, the CRD
it brings, ``kubectl auth can-i`` as the chart's ServiceAccount (what the operator needs and
nothing more), the pod template under the "restricted" Pod Security Standard, razor-operator run
as a process with that ServiceAccount's token and the Deployment's arguments (a RazorJob's pods,
status, gang restart and ttl deletion, all through the chart's RBAC), the namespaced variant,
and ``helm uninstall``.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import eventually
from kube_cluster import ROOT, ControlPlane
from razor.spec import CLUSTER_DEFAULTS, DEFAULT_CPU_IMAGE, DEFAULT_IMAGE, parse_cluster_defaults, parse_job
from k8s.conftest import namespace_name
from k8s.test_progress import post_progress, pod_token

from .conftest import CHART, Helm

pytestmark = pytest.mark.helm

CRD_FILE = ROOT / "crds" / "razorjob.yaml"
CRD_NAME = "razorjobs.razor.dev"
RELEASE, SYSTEM_NS = "razor", "razor-system"
SA = "razor-operator"                                  # <fullname>-operator
SA_USER = f"system:serviceaccount:{SYSTEM_NS}:{SA}"
NAMESPACED = ["watchNamespaces={team-a,team-b}", "metrics.enabled=false"]

# (apiGroup, resource, verb) the operator may use in the namespaces it watches.
POD_GROUP_GROUPS = ("scheduling.k8s.io", "scheduling.volcano.sh", "scheduling.x-k8s.io")
POD_GROUP_RULES = {(g, "podgroups", "create") for g in POD_GROUP_GROUPS}
JOB_RULES = {
    *{("razor.dev", "razorjobs", v) for v in ("get", "list", "watch", "patch", "delete")},
    ("razor.dev", "razorjobs/status", "patch"),
    *{("", "pods", v) for v in ("list", "watch", "create", "delete")},
    ("", "services", "get"), ("", "services", "create"),
    ("", "events", "create"),
    # spec.gang: the job's PodGroup, created only (the garbage collector deletes it with the
    # job), in exactly the three groups of the gang schedulers razor supports.
    *POD_GROUP_RULES,
}
# The users' ClusterRoles (rbac.userRoles), aggregated into the built-in admin/edit and view.
USER_EDIT_RULES = {
    *{("razor.dev", "razorjobs", v) for v in ("create", "get", "list", "watch", "update", "patch", "delete")},
    *{("", r, v) for r in ("pods", "pods/log") for v in ("get", "list", "watch")},
}
USER_VIEW_RULES = {
    *{("razor.dev", "razorjobs", v) for v in ("get", "list", "watch")},
    *{("", r, v) for r in ("pods", "pods/log") for v in ("get", "list", "watch")},
}
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"
USER_ROLES = [("ClusterRole", "razor-edit", None), ("ClusterRole", "razor-view", None),
              ("Role", "razor-defaults-reader", SYSTEM_NS), ("RoleBinding", "razor-defaults-reader", SYSTEM_NS)]
# What kopf observes cluster-wide: CRDs always, namespaces only when it is given namespaces.
CRD_RULES = {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
# The pods' progress reports (progress.enabled): TokenReviews, cluster-wide objects.
TOKEN_RULES = {("authentication.k8s.io", "tokenreviews", "create")}
PROGRESS_ARGS = ["--progress-port=8090", "--progress-url=http://razor-operator.razor-system.svc:8090/progress"]
NAMESPACE_RULES = {("", "namespaces", "list"), ("", "namespaces", "watch")}
# No permission-related complaint (nor any traceback) may appear in the operator's log.
LOG_PROBLEMS = ("Forbidden", "forbidden", "status=403", "(403)", "Not enough permissions",
                "Unauthorized", "status=401", "(401)", "Traceback", "LoginError")


# ---- helpers --------------------------------------------------------------------------------------
def kinds(objs: list[dict]) -> list[tuple[str, str, str | None]]:
    return sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objs)


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in {kinds(objs)}"
    return found[0]


def triples(role: dict) -> set[tuple[str, str, str]]:
    """A (Cluster)Role's rules as (apiGroup, resource, verb)."""
    out = set()
    for rule in role["rules"]:
        # No URLs; resourceNames only on the defaults reader's one rule (checked where it is used).
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        assert "resourceNames" not in rule or rule["resources"] == ["configmaps"], rule
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    out.add((g, r, v))
    return out


def operator_container(objs: list[dict]) -> dict:
    dep = one(objs, "Deployment")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return container


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def can_i(cluster: ControlPlane, user: str, verb: str, resource: str, namespace: str | None = None,
          subresource: str | None = None) -> bool:
    """``kubectl auth can-i`` as ``user``: in ``namespace``, or cluster-wide (-A) without one."""
    args = ["auth", "can-i", verb, resource, f"--as={user}"]
    args += ["-n", namespace] if namespace else ["-A"]
    if subresource:
        args.append(f"--subresource={subresource}")
    out = cluster.kubectl(*args, check=False)
    answer = out.stdout.strip()
    assert out.returncode in (0, 1) and answer.split()[:1] in (["yes"], ["no"]), \
        f"kubectl {' '.join(args)}: exit {out.returncode}: {answer} {out.stderr}"
    return out.returncode == 0 and answer == "yes"


def check_can_i(cluster: ControlPlane, user: str, allowed: list[tuple], denied: list[tuple]) -> None:
    """Every (verb, resource, namespace[, subresource]) of ``allowed`` is yes, of ``denied`` no."""
    cases = [(True, c) for c in allowed] + [(False, c) for c in denied]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda c: can_i(cluster, user, *c[1]), cases))
    wrong = [f"{'should' if want else 'should NOT'} be allowed: {' '.join(str(x) for x in c if x)}"
             for (want, c), got in zip(cases, answers) if want != got]
    assert not wrong, f"{user}:\n" + "\n".join(wrong)


def job_doc(name: str, namespace: str, **spec: Any) -> str:
    return json.dumps({"apiVersion": "razor.dev/v1alpha1", "kind": "RazorJob",
                       "metadata": {"name": name, "namespace": namespace},
                       "spec": {"config": "trainer/configs/digits_kd.yaml", **spec}})


def get_json(cluster: ControlPlane, *args: str) -> dict | None:
    out = cluster.kubectl("get", *args, "-o", "json", check=False)
    if out.returncode != 0:
        assert "NotFound" in out.stderr, out.stderr
        return None
    return json.loads(out.stdout)


def pods(cluster: ControlPlane, namespace: str, job: str, attempt: int | None = None) -> list[dict]:
    items = get_json(cluster, "pods", "-n", namespace, "-l", f"razor.dev/job-name={job}")["items"]
    if attempt is not None:
        items = [p for p in items if p["metadata"]["labels"].get("razor.dev/attempt") == str(attempt)
                 and not p["metadata"].get("deletionTimestamp")]
    return sorted(items, key=lambda p: p["metadata"]["name"])


def status(cluster: ControlPlane, namespace: str, job: str) -> dict:
    body = get_json(cluster, "razorjob", job, "-n", namespace)
    return (body or {}).get("status") or {}


def kubelet(cluster: ControlPlane, namespace: str, pod: str, phase: str, exit_code: int = 0,
            reason: str = "Completed") -> None:
    """Set a pod's status as a kubelet would (there is none)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if phase == "Running":
        state = {"running": {"startedAt": now}}
    else:
        state = {"terminated": {"exitCode": exit_code, "reason": reason, "startedAt": now,
                                "finishedAt": now}}
    body = {"status": {"phase": phase, "containerStatuses": [{
        "name": "trainer", "ready": phase == "Running", "restartCount": 0, "image": "razor-trainer",
        "imageID": "", "state": state}]}}
    cluster.kubectl("patch", "pod", pod, "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps(body))


def sa_kubeconfig(cluster: ControlPlane, sa: str, sa_namespace: str, path: Path) -> Path:
    """A kubeconfig that is the ServiceAccount: a token from the TokenRequest API, the cluster's
    server and CA (as ControlPlane writes its own)."""
    token = cluster.kubectl("create", "token", sa, "-n", sa_namespace, "--duration=1h").stdout.strip()
    ca = base64.b64encode(cluster.ca_file.read_bytes()).decode()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "razor-test", "cluster": {"server": cluster.server,
                                                        "certificate-authority-data": ca}}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": "razor-test", "user": sa,
                                              "namespace": sa_namespace}}],
        "current-context": sa,
    }, sort_keys=False))
    path.chmod(0o600)
    return path


class OperatorProcess:
    """razor-operator as a process with the Deployment's arguments, logged in as a ServiceAccount.

    The Deployment's liveness and metrics listen on 0.0.0.0 at fixed ports; here on 127.0.0.1 at
    free ones; its --defaults file is the release's ConfigMap, written next to the log. Everything
    else (--namespace, --standalone, --workers, ...) is the chart's.
    """

    def __init__(self, manifest: list[dict], kubeconfig: Path, log_path: Path) -> None:
        self.live_port, self.metrics_port, self.progress_port = free_port(), free_port(), free_port()
        self.progress_url = f"http://127.0.0.1:{self.progress_port}/progress"
        # The ConfigMap the Deployment mounts at /etc/razor, as a file here.
        defaults = log_path.with_name("defaults.yaml")
        defaults.write_text(one(manifest, "ConfigMap")["data"]["defaults.yaml"])
        args = []
        for a in operator_container(manifest)["args"]:
            if a.startswith("--liveness="):
                a = f"--liveness=http://127.0.0.1:{self.live_port}/healthz"
            elif a.startswith("--metrics-port="):
                a = f"--metrics-port={self.metrics_port}"
            elif a.startswith("--progress-port="):
                a = f"--progress-port={self.progress_port}"
            elif a.startswith("--progress-url="):  # the Service's URL, here the process's own
                a = f"--progress-url={self.progress_url}"
            elif a == "--defaults=/etc/razor/defaults.yaml":
                a = f"--defaults={defaults}"
            args.append(a)
        self.metrics = any(a.startswith("--metrics-port=") for a in args)
        self.progress = any(a.startswith("--progress-port=") for a in args)
        self.argv = [sys.executable, "-m", "razor_operator", *args, f"--kubeconfig={kubeconfig}",
                     "--metrics-address=127.0.0.1", "--progress-address=127.0.0.1"]
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> OperatorProcess:
        env = dict(os.environ)
        # Also KUBECONFIG: kopf logs in through the kubernetes library's load_kube_config(), whose
        # default file is $KUBECONFIG as it was when the library was imported, before main()
        # copies --kubeconfig into the environment. With --kubeconfig alone, kopf would log in
        # as whoever ~/.kube/config names, or fail (an operator bug, not the chart's).
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, cwd=ROOT)

        def alive() -> bool:
            assert self.proc.poll() is None, f"razor-operator exited:\n{self.log()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.live_port}/healthz",
                                            timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        try:
            eventually(alive, 60, "the operator's liveness probe")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_clean_log(self) -> None:
        text = self.log()
        problems = [line for line in text.splitlines() if any(p in line for p in LOG_PROBLEMS)]
        assert not problems, "permission trouble in the operator's log:\n" + "\n".join(problems[:20])

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()


# ---- without a cluster -----------------------------------------------------------------------------
@pytest.mark.parametrize("values", [[], NAMESPACED, ["peering.enabled=true", "replicas=2"]],
                         ids=["defaults", "namespaced-no-metrics", "peering"])
def test_helm_lint_passes(helm: Helm, values: list[str]):
    sets = [a for v in values for a in ("--set", v)]
    out = helm.run("lint", "--strict", str(CHART), *sets)
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout, out.stdout
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout, out.stdout


def test_the_crd_is_a_symbolic_link_to_the_repository_crd_and_helm_follows_it(helm: Helm, tmp_path):
    link = CHART / "crds" / "razorjob.yaml"
    assert link.is_symlink() and os.readlink(link) == "../../../crds/razorjob.yaml"
    assert link.resolve() == CRD_FILE.resolve()
    crd = yaml.safe_load(CRD_FILE.read_text())
    # helm template --include-crds, helm show crds, helm package: the repository's CRD, as is.
    rendered = [o for o in helm.template("--include-crds") if o["kind"] == "CustomResourceDefinition"]
    assert rendered == [crd]
    assert yaml.safe_load(helm.run("show", "crds", str(CHART)).stdout) == crd
    helm.run("package", str(CHART), "--destination", str(tmp_path))
    (tgz,) = tmp_path.glob("razor-0.1.0.tgz")
    with tarfile.open(tgz) as tar:
        member = tar.getmember("razor/crds/razorjob.yaml")
        assert member.isfile(), "the packaged chart must carry the CRD itself, not a link"
        assert tar.extractfile(member).read() == CRD_FILE.read_bytes()
        names = tar.getnames()
    assert "razor/values.schema.json" in names and "razor/templates/NOTES.txt" in names, names
    assert not any(n.endswith("README.md") for n in names), names   # .helmignore


def test_default_render(helm: Helm):
    objs = helm.template()
    assert kinds(objs) == [
        ("ClusterRole", "razor-edit", None),
        ("ClusterRole", "razor-operator", None),
        ("ClusterRole", "razor-view", None),
        ("ClusterRoleBinding", "razor-operator", None),
        ("ConfigMap", "razor-defaults", SYSTEM_NS),
        ("Deployment", "razor-operator", SYSTEM_NS),
        ("Role", "razor-defaults-reader", SYSTEM_NS),
        ("RoleBinding", "razor-defaults-reader", SYSTEM_NS),
        ("Service", "razor-operator", SYSTEM_NS),
        ("Service", "razor-operator-metrics", SYSTEM_NS),
        ("ServiceAccount", SA, SYSTEM_NS),
    ]
    dep = one(objs, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == SA and pod["automountServiceAccountToken"] is True
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    c = operator_container(objs)
    assert c["image"] == "razor-operator:0.1.0" and c["imagePullPolicy"] == "IfNotPresent"
    assert c["command"] == ["razor-operator"]
    assert c["args"] == ["--liveness=http://0.0.0.0:8080/healthz", "--metrics-port=9090", *PROGRESS_ARGS,
                         "--standalone", "--workers=32", "--host-port-range=29500-32767",
                         "--defaults=/etc/razor/defaults.yaml"]
    assert c["securityContext"] == {
        "runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"health": 8080, "metrics": 9090,
                                                                   "progress": 8090}
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"memory": "512Mi"}}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert {"name": "defaults", "mountPath": "/etc/razor", "readOnly": True} in c["volumeMounts"]
    assert {"name": "defaults", "configMap": {"name": "razor-defaults"}} in pod["volumes"]
    svc = one(objs, "Service", "razor-operator-metrics")
    assert svc["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics",
                                     "protocol": "TCP"}]
    # The pods' progress reports reach the operator through its Service (--progress-url), which
    # the defaults ConfigMap also names for razorctl render.
    assert f"--progress-url={one(objs, 'ConfigMap')['data']['progress-url']}" in c["args"]
    svc = one(objs, "Service", "razor-operator")
    assert svc["spec"]["selector"] == spec["selector"]["matchLabels"] and svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "progress", "port": 8090, "targetPort": "progress",
                                     "protocol": "TCP"}]
    # Cluster-wide: one ClusterRole with everything, bound to the ServiceAccount.
    assert triples(one(objs, "ClusterRole", "razor-operator")) == JOB_RULES | CRD_RULES | TOKEN_RULES
    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "razor-operator"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SA, "namespace": SYSTEM_NS}]


def test_non_default_render(helm: Helm):
    objs = helm.template(values=[*NAMESPACED, "image.repository=registry.local/razor-operator",
                                 "image.tag=dev", "image.pullPolicy=Always", "extraArgs={--verbose}",
                                 "liveness.port=8081", "nodeSelector.pool=system",
                                 "resources.limits.cpu=1", "defaults.image=registry.local/razor-trainer:2",
                                 "defaults.priorityClassName=batch"])
    assert kinds(objs) == [
        ("ClusterRole", "razor-edit", None),
        ("ClusterRole", "razor-operator", None),
        ("ClusterRole", "razor-view", None),
        ("ClusterRoleBinding", "razor-operator", None),
        ("ConfigMap", "razor-defaults", SYSTEM_NS),
        ("Deployment", "razor-operator", SYSTEM_NS),
        ("Role", "razor-defaults-reader", SYSTEM_NS),
        ("Role", "razor-operator", "team-a"),
        ("Role", "razor-operator", "team-b"),
        ("RoleBinding", "razor-defaults-reader", SYSTEM_NS),
        ("RoleBinding", "razor-operator", "team-a"),
        ("RoleBinding", "razor-operator", "team-b"),
        ("Service", "razor-operator", SYSTEM_NS),
        ("ServiceAccount", SA, SYSTEM_NS),
    ]   # no metrics Service
    c = operator_container(objs)
    assert c["image"] == "registry.local/razor-operator:dev" and c["imagePullPolicy"] == "Always"
    assert c["args"] == ["--liveness=http://0.0.0.0:8081/healthz",
                         *PROGRESS_ARGS, "--namespace=team-a", "--namespace=team-b",
                         "--standalone", "--workers=32", "--host-port-range=29500-32767",
                         "--defaults=/etc/razor/defaults.yaml", "--verbose"]
    assert yaml.safe_load(one(objs, "ConfigMap")["data"]["defaults.yaml"]) == {
        "image": "registry.local/razor-trainer:2", "cpuImage": DEFAULT_CPU_IMAGE,
        "priorityClassName": "batch", "port": 29500, "backoffLimit": 3, "masterAddrTimeoutSeconds": 300,
        "terminationGracePeriodSeconds": 120}
    # Other defaults, another checksum: `helm upgrade` restarts the operator to read them.
    annotation = "razor.dev/defaults-checksum"
    checksum = one(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"][annotation]
    assert checksum != one(helm.template(), "Deployment")["spec"]["template"]["metadata"]["annotations"][annotation]
    assert [p["name"] for p in c["ports"]] == ["health", "progress"] and c["ports"][0]["containerPort"] == 8081
    assert c["resources"]["limits"] == {"cpu": 1, "memory": "512Mi"}
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "system"}
    # Namespaced: the job rules in a Role per watched namespace, bound there to the
    # ServiceAccount; cluster-wide only what kopf observes.
    assert triples(one(objs, "ClusterRole", "razor-operator")) == CRD_RULES | NAMESPACE_RULES | TOKEN_RULES
    for ns in ("team-a", "team-b"):
        role = [o for o in objs if o["kind"] == "Role" and o["metadata"]["namespace"] == ns][0]
        assert triples(role) == JOB_RULES
        rb = [o for o in objs if o["kind"] == "RoleBinding" and o["metadata"]["namespace"] == ns][0]
        assert rb["roleRef"]["kind"] == "Role" and rb["roleRef"]["name"] == role["metadata"]["name"]
        assert rb["subjects"] == [{"kind": "ServiceAccount", "name": SA, "namespace": SYSTEM_NS}]


def test_without_progress_reports_no_service_no_rule_no_url(helm: Helm):
    objs = helm.template(values=["progress.enabled=false"])
    assert ("Service", "razor-operator", SYSTEM_NS) not in kinds(objs)
    assert triples(one(objs, "ClusterRole", "razor-operator")) == JOB_RULES | CRD_RULES
    c = operator_container(objs)
    assert not [a for a in c["args"] if a.startswith("--progress")]
    assert [p["name"] for p in c["ports"]] == ["health", "metrics"]


def test_an_existing_service_account(helm: Helm):
    objs = helm.template(values=["serviceAccount.create=false", "serviceAccount.name=ops"])
    assert not [o for o in objs if o["kind"] == "ServiceAccount"]
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert one(objs, "ClusterRoleBinding")["subjects"][0]["name"] == "ops"
    out = helm.run("template", RELEASE, str(CHART), "--set", "serviceAccount.create=false", check=False)
    assert out.returncode != 0 and "serviceAccount.name: the name of an existing" in out.stderr
    objs = helm.template(values=["rbac.create=false"])
    assert not [o for o in objs if "rbac" in o["apiVersion"]]


@pytest.mark.parametrize("values", [[], NAMESPACED], ids=["cluster-wide", "namespaced"])
def test_the_users_roles_are_aggregated_into_admin_edit_and_view(helm: Helm, values: list[str]):
    objs = helm.template(values=values)
    edit, view = one(objs, "ClusterRole", "razor-edit"), one(objs, "ClusterRole", "razor-view")
    assert triples(edit) == USER_EDIT_RULES and triples(view) == USER_VIEW_RULES
    aggregated = {name: {k.removeprefix(AGGREGATE) for k, v in role["metadata"]["labels"].items()
                         if k.startswith(AGGREGATE) and v == "true"}
                  for name, role in (("edit", edit), ("view", view))}
    assert aggregated == {"edit": {"admin", "edit"}, "view": {"view"}}
    # The chart binds no one to them: the cluster's bindings of admin, edit and view decide who.
    assert not [b for b in objs if b["kind"].endswith("Binding") and b["roleRef"]["name"] in
                ("razor-edit", "razor-view")]
    # Switched off: gone, and nothing else changes.
    off = helm.template(values=[*values, "rbac.userRoles=false"])
    assert kinds(off) == [k for k in kinds(objs) if k not in USER_ROLES]


def test_qualified_image_names_and_digests(helm: Helm):
    """Registry hosts with ports, paths and digests, for the operator's image and the trainer's."""
    digest = "sha256:" + "0123456789abcdef" * 4
    repo = "registry.example.com:5000/team"
    trainer, cpu = f"{repo}/razor-trainer:0.1.0", f"{repo}/razor-trainer@{digest}"
    objs = helm.template(values=[f"image.repository={repo}/razor-operator", f"defaults.image={trainer}",
                                 f"defaults.cpuImage={cpu}"])
    assert operator_container(objs)["image"] == f"{repo}/razor-operator:0.1.0"
    defaults = yaml.safe_load(one(objs, "ConfigMap")["data"]["defaults.yaml"])
    assert (defaults["image"], defaults["cpuImage"]) == (trainer, cpu)
    assert parse_cluster_defaults(defaults) == defaults          # the operator takes them
    pinned = helm.template(values=[f"image.repository={repo}/razor-operator", f"image.digest={digest}",
                                   "image.tag=0.1.0"])
    assert operator_container(pinned)["image"] == f"{repo}/razor-operator@{digest}"   # the digest wins


@pytest.mark.parametrize("values", [
    [], NAMESPACED, ["peering.enabled=true", "replicas=2"],
    ["peering.enabled=true", "watchNamespaces={team-a}"],
], ids=["cluster-wide", "namespaced", "peering", "peering-namespaced"])
def test_rbac_has_no_secrets_no_wildcards_no_escalation(helm: Helm, values: list[str]):
    objs = helm.template(values=values)
    roles = [o for o in objs if o["kind"] in ("ClusterRole", "Role")]
    assert roles
    allowed_verbs = {"get", "list", "watch", "create", "patch", "update", "delete"}
    for role in roles:
        assert "aggregationRule" not in role
        for group, resource, verb in triples(role):
            assert "*" not in (group, resource, verb), role["rules"]
            assert "secret" not in resource, role["rules"]
            assert verb in allowed_verbs, (verb, role["rules"])          # no escalate/bind/impersonate
            assert resource not in ("roles", "clusterroles", "rolebindings", "clusterrolebindings",
                                    "serviceaccounts", "serviceaccounts/token", "pods/exec",
                                    "nodes"), resource
            if resource == "configmaps":  # only `get` of the defaults ConfigMap, for razorctl render
                assert role["kind"] == "Role" and role["rules"] == [
                    {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["razor-defaults"],
                     "verbs": ["get"]}], role
    for binding in (o for o in objs if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert binding["roleRef"]["name"] not in ("cluster-admin", "admin", "edit")
    peering = {t for role in roles for t in triples(role) if t[0] == "kopf.dev"}
    if "peering.enabled=true" in values:
        resource = "kopfpeerings" if any(v.startswith("watchNamespaces") for v in values) \
            else "clusterkopfpeerings"
        assert peering == {("kopf.dev", resource, v) for v in ("get", "list", "watch", "patch")}
        assert "--peering=razor" in operator_container(objs)["args"]
        assert "--standalone" not in operator_container(objs)["args"]
    else:
        assert not peering


@pytest.mark.parametrize("args, message", [
    (["--set", "replicas=two"], "at '/replicas': got string, want integer"),
    (["--set", "bogus=1"], "additional properties 'bogus' not allowed"),
    (["--set", "replicas=2"], "at '/replicas': maximum: got 2, want 1"),     # two standalone operators
    (["--set", "image.tga=1"], "at '/image': additional properties 'tga' not allowed"),
    (["--set", "image.pullPolicy=Sometimes"], "at '/image/pullPolicy'"),
    (["--set", "metrics.port=0"], "at '/metrics/port'"),
    (["--set", "watchNamespaces={Team_A}"], "at '/watchNamespaces/0'"),
    (["--set", "watchNamespaces=team-a"], "at '/watchNamespaces': got string, want array"),
    (["--set", "defaults.image="], "at '/defaults/image'"),
    (["--set", "defaults.backofLimit=1"], "at '/defaults': additional properties 'backofLimit' not allowed"),
    (["--set", "defaults.port=80"], "at '/defaults/port'"),
    (["--set", "defaults.cpuImage=razor trainer"], "at '/defaults/cpuImage'"),
    (["--set", "defaults.terminationGracePeriodSeconds=0"], "at '/defaults/terminationGracePeriodSeconds'"),
    (["--set", "image.repository=razor-operator:0.1.0"], "at '/image/repository'"),   # the tag goes in image.tag
    (["--set", "image.digest=0.1.0"], "at '/image/digest'"),
    (["--set", "rbac.userRoles=maybe"], "at '/rbac/userRoles'"),
], ids=["replicas-word", "unknown-key", "replicas-2-standalone", "image-typo", "pull-policy",
        "metrics-port-0", "namespace-not-dns", "namespaces-not-list", "empty-trainer-image",
        "defaults-typo", "defaults-port-80", "cpu-image-space", "grace-0", "repository-with-tag",
        "digest-not-a-digest", "user-roles-word"])
def test_a_schema_violation_fails_with_a_clear_message(helm: Helm, args: list[str], message: str):
    out = helm.run("template", RELEASE, str(CHART), *args, check=False)
    assert out.returncode != 0, out.stdout[:2000]
    assert "values don't meet the specifications of the schema" in out.stderr, out.stderr
    assert message in out.stderr, out.stderr


def test_a_schema_violation_in_a_values_file(helm: Helm, tmp_path: Path):
    values = tmp_path / "values.yaml"
    values.write_text('replicas: "two"\nwatchNamespace: [team-a]\n')
    out = helm.run("template", RELEASE, str(CHART), "-f", str(values), check=False)
    assert out.returncode != 0
    assert "at '/replicas': got string, want integer" in out.stderr, out.stderr
    assert "additional properties 'watchNamespace' not allowed" in out.stderr, out.stderr


def test_values_defaults_are_razors_own_and_the_operator_accepts_them(helm: Helm):
    """A default install changes nothing a job gets: values.yaml's `defaults` are the spec
    model's defaults; the CRD leaves these fields to the operator (no schema default), and the
    ConfigMap the operator reads is a valid --defaults file."""
    crd = yaml.safe_load(CRD_FILE.read_text())
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())["defaults"]
    model = parse_job(json.loads(job_doc("x", "default", gpusPerNode=1))).to_dict()["spec"]
    cpu = parse_job(json.loads(job_doc("x", "default"))).to_dict()["spec"]
    assert values == {**{k: model[k] for k in ("image", "port", "backoffLimit", "masterAddrTimeoutSeconds",
                                               "terminationGracePeriodSeconds")},
                      "cpuImage": cpu["image"]}
    assert (values["image"], values["cpuImage"]) == (DEFAULT_IMAGE, DEFAULT_CPU_IMAGE)
    assert not [k for k in CLUSTER_DEFAULTS if "default" in props[k]]
    cm = one(helm.template(), "ConfigMap", "razor-defaults")
    assert parse_cluster_defaults(yaml.safe_load(cm["data"]["defaults.yaml"])) == values


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["version"], chart["appVersion"]) == \
        ("v2", "razor", "0.1.0", "0.1.0")


# ---- against a control plane -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def installed(helm: Helm, cluster: ControlPlane) -> Iterator[subprocess.CompletedProcess]:
    """``helm install razor charts/razor --namespace razor-system --create-namespace``."""
    assert get_json(cluster, "crd", CRD_NAME) is None, "the CRD must come from the chart"
    out = helm.run("install", RELEASE, str(CHART), "--namespace", SYSTEM_NS, "--create-namespace",
                   cluster=cluster)
    yield out
    helm.run("uninstall", RELEASE, "--namespace", SYSTEM_NS, cluster=cluster, check=False)


def test_install_brings_the_crd_and_the_operator(installed, helm: Helm, cluster: ControlPlane):
    assert "STATUS: deployed" in installed.stdout, installed.stdout
    assert f"kubectl -n {SYSTEM_NS} logs -f deployment/razor-operator" in installed.stdout
    assert "razorctl submit examples/razorjob-digits-kd.yaml" in installed.stdout
    assert f"runs {DEFAULT_IMAGE} with GPUs, {DEFAULT_CPU_IMAGE} on CPU" in installed.stdout
    assert "through the ClusterRoles razor-edit and razor-view" in installed.stdout
    crd = get_json(cluster, "crd", CRD_NAME)
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established.get("Established") == "True"
    want = yaml.safe_load(CRD_FILE.read_text())
    assert crd["spec"]["versions"][0]["schema"] == want["spec"]["versions"][0]["schema"]
    assert crd["spec"]["names"]["shortNames"] == ["rj"]
    for kind, name, ns in [("deployment", "razor-operator", SYSTEM_NS), ("serviceaccount", SA, SYSTEM_NS),
                           ("service", "razor-operator-metrics", SYSTEM_NS),
                           ("service", "razor-operator", SYSTEM_NS),
                           ("configmap", "razor-defaults", SYSTEM_NS),
                           ("clusterrole", "razor-operator", None),
                           ("clusterrolebinding", "razor-operator", None)]:
        obj = get_json(cluster, kind, name, *(["-n", ns] if ns else []))
        assert obj is not None, f"{kind}/{name} not installed"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    dep = get_json(cluster, "deployment", "razor-operator", "-n", SYSTEM_NS)
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    listed = json.loads(helm.run("list", "-n", SYSTEM_NS, "-o", "json", cluster=cluster).stdout)
    assert [(r["name"], r["status"], r["chart"], r["app_version"]) for r in listed] == \
        [(RELEASE, "deployed", "razor-0.1.0", "0.1.0")]


def test_the_pod_template_passes_the_restricted_pod_security_standard(helm: Helm, cluster: ControlPlane,
                                                                       namespace: str):
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")
    template = one(helm.template(), "Deployment")["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "operator-pss", "namespace": namespace,
                        "labels": template["metadata"]["labels"]},
           "spec": {**template["spec"], "serviceAccountName": "default"}}
    out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert out.returncode == 0 and "Warning" not in out.stderr, out.stderr
    # The check is real: the same pod with privilege escalation allowed is refused.
    bad = copy.deepcopy(pod)
    bad["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert out.returncode != 0 and "violates PodSecurity" in out.stderr, out.stderr


def test_the_service_account_can_do_what_the_operator_needs_and_nothing_more(
        installed, cluster: ControlPlane, namespace: str):
    ns = namespace
    allowed = [
        ("create", "pods", ns), ("delete", "pods", ns), ("list", "pods", None), ("watch", "pods", None),
        ("get", "services", ns), ("create", "services", ns),
        ("list", "razorjobs.razor.dev", None), ("watch", "razorjobs.razor.dev", None),
        ("get", "razorjobs.razor.dev", ns), ("patch", "razorjobs.razor.dev", ns),
        ("delete", "razorjobs.razor.dev", ns),
        ("patch", "razorjobs.razor.dev", ns, "status"),
        ("create", "events", ns),
        ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("create", "tokenreviews.authentication.k8s.io", None),            # the pods' progress reports
        *[("create", f"podgroups.{g}", ns) for g in POD_GROUP_GROUPS],      # spec.gang: the job's PodGroup
    ]
    denied = [
        ("*", "*", None), ("*", "*", ns),                                   # not cluster-admin
        ("get", "secrets", ns), ("list", "secrets", None), ("watch", "secrets", ns),
        ("create", "deployments.apps", ns), ("create", "jobs.batch", ns),
        ("delete", "namespaces", None), ("create", "namespaces", None), ("list", "namespaces", None),
        ("create", "razorjobs.razor.dev", ns),                              # users submit jobs
        ("update", "razorjobs.razor.dev", ns), ("update", "razorjobs.razor.dev", ns, "status"),
        ("get", "pods", ns), ("patch", "events", ns), ("create", "events.events.k8s.io", ns),
        ("update", "pods", ns), ("patch", "pods", ns), ("create", "pods", ns, "exec"),
        ("update", "pods", ns, "status"),
        ("delete", "services", ns), ("update", "services", ns), ("list", "services", None),
        ("get", "configmaps", ns), ("create", "serviceaccounts", ns, "token"),
        ("create", "subjectaccessreviews.authorization.k8s.io", None),
        ("get", "nodes", None), ("create", "clusterroles.rbac.authorization.k8s.io", None),
        ("bind", "clusterroles.rbac.authorization.k8s.io", None),
        ("escalate", "roles.rbac.authorization.k8s.io", ns), ("impersonate", "users", None),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("get", "kopfpeerings.kopf.dev", ns),                               # standalone
        # The PodGroups grew RBAC by create alone, in their three groups: nothing else of them,
        # no Workloads, no other scheduling objects.
        *[(v, f"podgroups.{g}", ns) for g in POD_GROUP_GROUPS for v in ("get", "list", "update", "patch", "delete")],
        ("create", "workloads.scheduling.k8s.io", ns), ("create", "priorityclasses.scheduling.k8s.io", None),
        ("create", "queues.scheduling.volcano.sh", None), ("create", "podgroups.scheduling.example.com", ns),
    ]
    check_can_i(cluster, SA_USER, allowed, denied)


def test_users_with_edit_run_razorjobs_and_users_with_view_read_them(
        installed, cluster: ControlPlane, namespace: str):
    """The built-in admin, edit and view ClusterRoles, bound in one namespace, carry the chart's
    user roles once kube-controller-manager's clusterrole-aggregation controller has run."""
    ns, other = namespace, "default"
    for user, role in (("alice", "edit"), ("bob", "view"), ("carol", "admin")):
        cluster.kubectl("create", "rolebinding", f"{user}-{role}", "-n", ns, f"--clusterrole={role}",
                        f"--user={user}")
    eventually(lambda: can_i(cluster, "alice", "create", "razorjobs.razor.dev", ns), 60,
               "the aggregation of razor-edit into edit")
    eventually(lambda: can_i(cluster, "bob", "list", "razorjobs.razor.dev", ns), 60,
               "the aggregation of razor-view into view")
    edit = [(v, "razorjobs.razor.dev", ns) for v in ("create", "get", "list", "watch", "update", "patch", "delete")]
    read = [("get", "pods", ns), ("list", "pods", ns), ("get", "pods", ns, "log")]
    check_can_i(cluster, "alice", allowed=edit + read,
                denied=[("create", "razorjobs.razor.dev", other), ("get", "pods", other, "log"),
                        ("patch", "razorjobs.razor.dev", ns, "status")])
    check_can_i(cluster, "carol", allowed=edit + read, denied=[("create", "razorjobs.razor.dev", other)])
    check_can_i(cluster, "bob",
                allowed=[(v, "razorjobs.razor.dev", ns) for v in ("get", "list", "watch")] + read,
                denied=[(v, "razorjobs.razor.dev", ns) for v in ("create", "update", "patch", "delete")]
                + [("list", "razorjobs.razor.dev", other)])
    # And for real: alice submits a RazorJob, bob reads it and cannot delete it.
    cluster.kubectl("apply", "-f", "-", "--as=alice", input=job_doc("alices", ns))
    assert cluster.kubectl("get", "razorjob", "alices", "-n", ns, "--as=bob", "-o", "name").stdout.strip() \
        == "razorjob.razor.dev/alices"
    out = cluster.kubectl("delete", "razorjob", "alices", "-n", ns, "--as=bob", check=False)
    assert out.returncode != 0 and "forbidden" in out.stderr, out.stderr
    # alice cancels it (no operator later finds it in a namespace being deleted).
    cluster.kubectl("delete", "razorjob", "alices", "-n", ns, "--as=alice", "--wait=true")
    assert get_json(cluster, "razorjob", "alices", "-n", ns) is None


def test_every_user_may_read_the_cluster_defaults_and_nothing_else_there(installed, cluster: ControlPlane):
    """razorctl render shows what the operator creates, with the cluster's defaults: any
    authenticated user (dave has no binding at all) may get that one ConfigMap, nothing more."""
    dave = ["--as=dave", "--as-group=system:authenticated"]
    out = cluster.kubectl("get", "configmap", "razor-defaults", "-n", SYSTEM_NS, "-o", "json", *dave)
    assert "defaults.yaml" in json.loads(out.stdout)["data"]
    for args in (["get", "configmap", "kube-root-ca.crt", "-n", SYSTEM_NS], ["get", "configmaps", "-n", SYSTEM_NS]):
        out = cluster.kubectl(*args, *dave, check=False)
        assert out.returncode != 0 and "forbidden" in out.stderr, out.stderr


def run_a_gang_through_its_life(cluster: ControlPlane, op: OperatorProcess, ns: str,
                                image: str = DEFAULT_CPU_IMAGE) -> None:
    """A 2-node job with a clock: pods, Service, status, a rank failure (the gang is deleted and
    created again), success, then the ttl deletes the job. Every API call the operator makes.
    The job (on CPU) names no image: its pods run the release's ``defaults.cpuImage``, with the
    release's grace and no service account token."""
    cluster.kubectl("apply", "-f", "-", input=job_doc("kd", ns, nnodes=2, ttlSecondsAfterFinished=1))
    first = eventually(lambda: len(p := pods(cluster, ns, "kd", attempt=1)) == 2 and p, 60, "2 pods")
    assert [p["metadata"]["name"] for p in first] == ["kd-0", "kd-1"]
    assert [c["image"] for p in first for c in p["spec"]["containers"]] == [image, image]
    assert [p["spec"]["terminationGracePeriodSeconds"] for p in first] == [120, 120]
    assert [p["spec"]["automountServiceAccountToken"] for p in first] == [False, False]
    assert not [v for p in first for v in p["spec"]["volumes"] if v["name"].startswith("kube-api-access")]
    assert "image" not in get_json(cluster, "razorjob", "kd", "-n", ns)["spec"]
    assert eventually(lambda: status(cluster, ns, "kd").get("phase"), 30, "a phase") == "Pending"
    assert get_json(cluster, "service", "kd", "-n", ns)["spec"]["clusterIP"] == "None"
    # No finalizer: deleting a job never waits for the operator (its TTL clock needs none).
    assert not get_json(cluster, "razorjob", "kd", "-n", ns)["metadata"].get("finalizers")
    for p in first:
        kubelet(cluster, ns, p["metadata"]["name"], "Running")
    eventually(lambda: status(cluster, ns, "kd").get("phase") == "Running", 30, "phase Running")
    if op.progress:  # rank 0 reports, with its pod's token; the operator checks it with the chart's RBAC
        env = {e["name"]: e["value"] for e in first[0]["spec"]["containers"][0]["env"]}
        assert env["RAZOR_PROGRESS_URL"] == op.progress_url
        code, answer = post_progress(op.progress_url, pod_token(cluster, ns, "kd-0"),
                                     {"progress": {"epoch": 1, "epochs": 4, "percent": 25}})
        assert code == 200 and answer["status"] == "stored", answer
        assert status(cluster, ns, "kd")["progress"]["percent"] == 25
    kubelet(cluster, ns, "kd-1", "Failed", 137, "OOMKilled")
    second = eventually(lambda: len(p := pods(cluster, ns, "kd", attempt=2)) == 2 and p, 60,
                        "the gang's attempt 2")
    assert status(cluster, ns, "kd")["restarts"] == 1
    for p in second:
        kubelet(cluster, ns, p["metadata"]["name"], "Succeeded")
    # Succeeded, then deleted by the ttl.
    eventually(lambda: get_json(cluster, "razorjob", "kd", "-n", ns) is None, 60,
               "the job deleted after ttlSecondsAfterFinished")
    events = get_json(cluster, "events", "-n", ns, "--field-selector", "involvedObject.name=kd")["items"]
    reasons = {e["reason"] for e in events}
    assert {"Created", "Running", "Restarting", "Completed"} <= reasons, reasons


def test_the_operator_runs_jobs_with_the_service_accounts_token(
        installed, helm: Helm, cluster: ControlPlane, namespace: str, tmp_path: Path):
    kubeconfig = sa_kubeconfig(cluster, SA, SYSTEM_NS, tmp_path / "sa.kubeconfig")
    whoami = cluster.kubectl("auth", "whoami", f"--kubeconfig={kubeconfig}", "-o", "json")
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == SA_USER
    manifest = [o for o in yaml.safe_load_all(helm.run("get", "manifest", RELEASE, "-n", SYSTEM_NS,
                                                       cluster=cluster).stdout) if o]
    with OperatorProcess(manifest, kubeconfig, tmp_path / "operator.log") as op:
        run_a_gang_through_its_life(cluster, op, namespace)
        assert "razor_pods_created_total 4.0" in op.metrics_text()
        op.assert_clean_log()


def test_a_namespaced_install_runs_jobs_only_in_its_namespaces(
        helm: Helm, cluster: ControlPlane, namespace: str, tmp_path: Path):
    watched, other = namespace, namespace_name("not-watched")
    system = "razor-ns-system"
    cluster.kubectl("create", "namespace", other)
    try:
        out = helm.run("install", "razor-ns", str(CHART), "--namespace", system, "--create-namespace",
                       "--set", f"watchNamespaces={{{watched}}}", "--set", "metrics.enabled=false",
                       "--set", "defaults.image=registry.local/razor-trainer:9",
                       "--set", "defaults.cpuImage=registry.local/razor-trainer:9-cpu", cluster=cluster)
        assert f"runs RazorJobs in the namespaces {watched}." in out.stdout, out.stdout
        assert get_json(cluster, "role", "razor-ns-operator", "-n", watched) is not None
        assert get_json(cluster, "role", "razor-ns-operator", "-n", other) is None
        user = f"system:serviceaccount:{system}:razor-ns-operator"
        check_can_i(
            cluster, user,
            allowed=[("create", "pods", watched), ("list", "razorjobs.razor.dev", watched),
                     ("patch", "razorjobs.razor.dev", watched, "status"),
                     ("create", "events", watched), ("list", "namespaces", None),
                     ("create", "tokenreviews.authentication.k8s.io", None),
                     ("list", "customresourcedefinitions.apiextensions.k8s.io", None)],
            denied=[("create", "pods", other), ("list", "razorjobs.razor.dev", None),
                    ("list", "razorjobs.razor.dev", other), ("list", "pods", None),
                    ("create", "events", other), ("get", "secrets", watched),
                    ("get", "namespaces", None), ("delete", "namespaces", None), ("*", "*", None)])
        kubeconfig = sa_kubeconfig(cluster, "razor-ns-operator", system, tmp_path / "sa.kubeconfig")
        manifest = [o for o in yaml.safe_load_all(helm.run("get", "manifest", "razor-ns", "-n", system,
                                                           cluster=cluster).stdout) if o]
        args = operator_container(manifest)["args"]
        assert f"--namespace={watched}" in args and not any(a.startswith("--metrics") for a in args)
        with OperatorProcess(manifest, kubeconfig, tmp_path / "operator.log") as op:
            cluster.kubectl("apply", "-f", "-", input=job_doc("elsewhere", other, nnodes=2))
            run_a_gang_through_its_life(cluster, op, watched, image="registry.local/razor-trainer:9-cpu")
            # The job in the namespace it does not watch: untouched.
            assert pods(cluster, other, "elsewhere") == [] and status(cluster, other, "elsewhere") == {}
            op.assert_clean_log()
        out = helm.run("uninstall", "razor-ns", "-n", system, cluster=cluster)
        assert 'release "razor-ns" uninstalled' in out.stdout
        assert get_json(cluster, "role", "razor-ns-operator", "-n", watched) is None
        assert get_json(cluster, "clusterrole", "razor-ns-operator") is None
    finally:
        helm.run("uninstall", "razor-ns", "-n", system, cluster=cluster, check=False)
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_uninstall(installed, helm: Helm, cluster: ControlPlane):
    """Last: ``helm uninstall`` removes the release's objects; the CRD stays (Helm keeps CRDs)."""
    out = helm.run("uninstall", RELEASE, "--namespace", SYSTEM_NS, cluster=cluster)
    assert f'release "{RELEASE}" uninstalled' in out.stdout
    for kind, name, ns in [("deployment", "razor-operator", SYSTEM_NS), ("serviceaccount", SA, SYSTEM_NS),
                           ("service", "razor-operator-metrics", SYSTEM_NS),
                           ("service", "razor-operator", SYSTEM_NS),
                           ("configmap", "razor-defaults", SYSTEM_NS),
                           ("clusterrole", "razor-operator", None),
                           ("clusterrole", "razor-edit", None), ("clusterrole", "razor-view", None),
                           ("clusterrolebinding", "razor-operator", None)]:
        assert get_json(cluster, kind, name, *(["-n", ns] if ns else [])) is None, f"{kind}/{name}"
    assert get_json(cluster, "crd", CRD_NAME) is not None
    assert not can_i(cluster, SA_USER, "list", "razorjobs.razor.dev")
    assert helm.run("list", "-n", SYSTEM_NS, "-q", cluster=cluster).stdout.strip() == ""
