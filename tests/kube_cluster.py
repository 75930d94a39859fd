"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
(and kube-scheduler, for the real node of tests/kube_node.py).

    with ControlPlane(crds=[ROOT / "crds" / "razorjob.yaml"]) as cp:
        cp.kubectl("get", "namespaces")
        subprocess.run(["razorctl", ...], env=cp.env())

Everything listens on 127.0.0.1 only, on ports picked free at start. The binaries come from
``$RAZOR_K8S_BIN`` or else from ``scripts/k8s-binaries.sh`` (which builds and caches them; its last
line of stdout is the bin dir). Certificates and keys are made with the ``openssl`` command: a CA, a
serving certificate for 127.0.0.1/localhost signed by it, and the service-account signing key. The
admin is a bearer token (group ``system:masters``) from a token file; a kubeconfig with a context
``razor-test`` carries it, for kubectl and for the controller manager.

By default there is no kubelet and no scheduler: pods are stored, never run. The controller manager
then runs only the garbage collector (ownerReferences), the namespace controller (deleting a
namespace deletes its contents), the service-account controllers (the ``default`` ServiceAccount of
each namespace, which pod admission needs, and service-account token secrets), the ClusterRole
aggregation, and the node lifecycle and taint eviction controllers (Node objects whose heartbeats
stop are tainted, their pods evicted). tests/kube_node.py starts it with ``bind_address`` on the node network's host side,
every default controller (``controllers=("*",)``) and ``scheduler=True``, for a real node.

CRDs passed as ``crds`` are applied (``kubectl apply -f``) and waited for (Established) *before* the
controller manager starts, so that the garbage collector's first discovery already knows their
kinds: it rediscovers only every 30 s, and until then it cannot follow ownerReferences to them.

All waits are bounded; a component that fails to start raises :class:`ControlPlaneError` with the
tail of its log. Logs are written in the temp dir, which is kept when the start fails (or with
``keep=True`` / ``RAZOR_K8S_KEEP=1``) and removed otherwise. On exit every process is terminated
(SIGTERM, then SIGKILL after a grace period); on Linux they also get SIGKILL if the Python process
dies first, so none is left behind.
"""

from __future__ import annotations

import base64
import ctypes
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import yaml

ROOT = Path(__file__).resolve().parents[1]
BINARIES_SCRIPT = ROOT / "scripts" / "k8s-binaries.sh"

#: The controllers kube-controller-manager runs.
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "clusterrole-aggregation-controller",
    # Node objects that stop posting heartbeats get the unreachable NoExecute taint, and their pods
    # are evicted after their tolerationSeconds (tests/k8s: a lost node).
    "node-lifecycle-controller",
    "taint-eviction-controller",
    # GenericWorkload: kube-apiserver puts the finalizer scheduling.k8s.io/podgroup-protection on
    # every PodGroup; this controller takes it off once no pod names the group (else a deleted
    # job's PodGroup would stay forever).
    "podgroup-protection-controller",
)
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
#: The ClusterIP of the ``kubernetes`` Service (the range's first address): in-cluster clients'
#: KUBERNETES_SERVICE_HOST, so it is in the serving certificate.
KUBERNETES_SERVICE_IP = "10.0.0.1"
CONTEXT = "razor-test"
#: Kubernetes' own gang scheduling (1.36: alpha, off by default), as docs/kubernetes.md#gang-scheduling
#: asks an admin to turn it on: the Workload and PodGroup API (scheduling.k8s.io/v1alpha2) served
#: by kube-apiserver, the pods' spec.schedulingGroup kept (GenericWorkload), and kube-scheduler's
#: GangScheduling plugin, and kube-controller-manager's podgroup-protection controller (which
#: removes the finalizer kube-apiserver puts on each PodGroup once no pod names it). The kubelet
#: needs no gate.
FEATURE_GATES = "GenericWorkload=true,GangScheduling=true"
RUNTIME_CONFIG = "scheduling.k8s.io/v1alpha2=true"
#: Users of the components, by bearer token: (user, groups). RBAC's bootstrap bindings (and the
#: Node authorizer for kubelets) give each what it needs, as on a real cluster.
COMPONENT_USERS = {
    "kube-scheduler": ("system:kube-scheduler", ""),
    "kube-proxy": ("system:kube-proxy", ""),
}


class ControlPlaneError(RuntimeError):
    """The control plane could not be started (the message carries the relevant log tail)."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; the message has its stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '').strip()}"


def find_binaries(timeout: float = 3600) -> Path:
    """The directory with etcd, kube-apiserver, kube-controller-manager and kubectl.

    ``$RAZOR_K8S_BIN`` if set, else the last line ``scripts/k8s-binaries.sh`` prints (a first build
    of the binaries takes a long time; a cached one, about a second).
    """
    env_dir = os.environ.get("RAZOR_K8S_BIN")
    if env_dir:
        bin_dir = Path(env_dir)
    else:
        try:
            out = subprocess.run([str(BINARIES_SCRIPT)], capture_output=True, text=True,
                                 timeout=timeout, cwd=ROOT)
        except subprocess.TimeoutExpired as e:
            raise ControlPlaneError(f"{BINARIES_SCRIPT} did not finish in {timeout:.0f}s") from e
        lines = out.stdout.strip().splitlines()
        if out.returncode != 0 or not lines:
            raise ControlPlaneError(
                f"{BINARIES_SCRIPT} failed (exit {out.returncode}):\n{_tail_text(out.stderr)}")
        bin_dir = Path(lines[-1])
    missing = [b for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
               if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"not found or not executable in {bin_dir}: {', '.join(missing)}")
    return bin_dir


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail_text(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover
        return None


_LIBC = _libc() if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the thread that started it dies (Linux's
    PR_SET_PDEATHSIG), so that a killed test run leaves no component behind."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)


class _Process:
    """One component: its Popen and its log file."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        with open(log, "wb") as f:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if _LIBC is not None else None)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return _tail_text(text, lines)

    def stop(self, grace: float) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover (SIGKILL is not refused)
            pass


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on loopback, for tests; a context manager.

    Attributes once started: ``server`` (https://127.0.0.1:PORT), ``token`` (the admin's bearer
    token), ``ca_file``, ``kubeconfig`` (a file with the context ``razor-test``, namespace default),
    ``dir`` (the temp dir with certificates, data and logs), ``bin_dir``, ``flags`` (each
    component's command-line flags) and ``startup_seconds`` (from the certificates to a ready
    controller manager; finding the binaries is not counted).
    """

    def __init__(self, *, bin_dir: Path | str | None = None, crds: Sequence[Path | str] = (),
                 start_timeout: float = 60, keep: bool | None = None, stop_grace: float = 5,
                 bind_address: str = "127.0.0.1", controllers: Sequence[str] = CONTROLLERS,
                 controller_flags: Sequence[str] = (), scheduler: bool = False,
                 node_names: Sequence[str] = ()) -> None:
        self.bind_address = bind_address
        self.controllers = tuple(controllers)
        self.controller_flags = list(controller_flags)
        self.with_scheduler = scheduler
        self.node_names = tuple(node_names)  # kubelets to make credentials for
        self.bin_dir = Path(bin_dir) if bin_dir else None
        self.crds = [Path(c) for c in crds]
        self.start_timeout = start_timeout
        self.keep = keep if keep is not None else os.environ.get("RAZOR_K8S_KEEP") == "1"
        self.stop_grace = stop_grace
        self.dir: Path | None = None
        self.server = ""
        self.token = ""
        self.ca_file = Path()
        self.kubeconfig = Path()
        self.startup_seconds = 0.0
        self.flags: dict[str, list[str]] = {}
        self._tokens: dict[str, str] = {}
        self._procs: list[_Process] = []

    # ---- context manager ---------------------------------------------------------------------------
    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---- public API -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start everything and wait until it is ready; on failure, stop what started and raise."""
        if self.bin_dir is None:
            self.bin_dir = find_binaries()
        t0 = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="razor-k8s-"))
        try:
            self._make_credentials()
            deadline = time.monotonic() + self.start_timeout
            self._start_etcd_and_apiserver(deadline)
            self._write_kubeconfig()
            for crd in self.crds:
                self.apply_crd(crd, timeout=max(1.0, deadline - time.monotonic()))
            self._start_controller_manager(deadline)
            if self.with_scheduler:
                self._start_scheduler(deadline)
        except BaseException as e:
            logs = self.dir
            self._stop_processes()
            self.keep = True  # the logs stay for a look
            if isinstance(e, ControlPlaneError):
                raise ControlPlaneError(f"{e}\n(logs in {logs})") from None
            raise
        self.startup_seconds = time.monotonic() - t0

    def stop(self) -> None:
        """Stop every component (SIGTERM, SIGKILL after the grace period), then remove the temp dir."""
        self._stop_processes()
        if self.dir is not None and not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for subprocesses (``os.environ`` or ``base``) with KUBECONFIG set, and
        KUBECACHEDIR in the temp dir (kubectl's discovery cache, keyed by host:port, would otherwise
        pile up in ~/.kube/cache and could be stale for a later cluster on the same port)."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        if self.dir is not None:
            env["KUBECACHEDIR"] = str(self.dir / "kube-cache")
        return env

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this control plane; text output captured.

        With ``check``, a non-zero exit raises :class:`KubectlError` (its message has the stderr).
        """
        assert self.bin_dir is not None, "not started"
        argv = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        out = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                             env=self.env())
        if check and out.returncode != 0:
            raise KubectlError(out.returncode, argv, out.stdout, out.stderr)
        return out

    def apply_crd(self, path: Path | str, timeout: float = 30) -> None:
        """``kubectl apply -f`` a CRD file and wait until every CRD in it is Established."""
        out = self.kubectl("apply", "-f", str(path), "-o", "name", check=False)
        if out.returncode != 0:
            raise ControlPlaneError(f"kubectl apply -f {path} refused:\n{out.stderr.strip()}")
        names = [n for n in out.stdout.split() if n]
        done = self.kubectl("wait", "--for=condition=Established", f"--timeout={max(1, int(timeout))}s",
                            *names, check=False, timeout=timeout + 10)
        if done.returncode != 0:
            raise ControlPlaneError(f"{' '.join(names)} not Established in {timeout:.0f}s: "
                                    f"{done.stderr.strip()}")

    def component_kubeconfig(self, component: str) -> Path:
        """A kubeconfig for ``component`` (a key of COMPONENT_USERS, or ``kubelet-<node>``): its
        own user, as on a real cluster, not the admin."""
        assert self.dir is not None, "not started"
        path = self.dir / f"{component}.kubeconfig"
        if not path.exists():
            path.write_text(self._kubeconfig_text(self._tokens[component]))
            path.chmod(0o600)
        return path

    def request(self, path: str, timeout: float = 5) -> tuple[int, str]:
        """GET ``path`` from the API server as the admin: (HTTP status, body)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        req = urllib.request.Request(self.server + path,
                                     headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    # ---- start-up ----------------------------------------------------------------------------------
    def _openssl(self, *args: str) -> None:
        out = subprocess.run(["openssl", *args], cwd=self.dir, capture_output=True, text=True,
                             timeout=30)
        if out.returncode != 0:
            raise ControlPlaneError(f"openssl {' '.join(args)} failed:\n{out.stderr.strip()}")

    def _make_credentials(self) -> None:
        """CA, serving certificate, service-account key pair (all ECDSA P-256: fast) and the token."""
        assert self.dir is not None
        if shutil.which("openssl") is None:
            raise ControlPlaneError("the openssl command is needed to make the certificates")
        d = self.dir
        ec = ("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
        for key in ("ca.key", "apiserver.key", "sa.key"):
            self._openssl(*ec, "-out", key)
        self._openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        self._openssl("req", "-x509", "-new", "-key", "ca.key", "-days", "2", "-subj", "/CN=razor-test-ca",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.crt")
        (d / "apiserver.ext").write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            f"subjectAltName=IP:127.0.0.1,DNS:localhost,IP:{self.bind_address},IP:{KUBERNETES_SERVICE_IP},"
            "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
            "DNS:kubernetes.default.svc.cluster.local\n"
            # Key identifiers: verifiers in strict mode (Python 3.13's default) require them.
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n")
        self._openssl("req", "-new", "-key", "apiserver.key", "-subj", "/CN=kube-apiserver",
                      "-out", "apiserver.csr")
        self._openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                      "-CAcreateserial", "-days", "2", "-extfile", "apiserver.ext", "-out", "apiserver.crt")
        self.ca_file = d / "ca.crt"
        # The API server's client certificate for kubelets (logs, exec): system:masters.
        self.sign_certificate("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client",
                              "extendedKeyUsage=clientAuth\n")
        self.token = secrets.token_hex(24)
        lines = [f'{self.token},razor-test-admin,razor-test-admin,"system:masters"']
        users = dict(COMPONENT_USERS)
        users.update({f"kubelet-{n}": (f"system:node:{n}", "system:nodes") for n in self.node_names})
        self._tokens = {}
        for component, (user, groups) in users.items():
            token = secrets.token_hex(24)
            self._tokens[component] = token
            lines.append(f'{token},{user},{user},"{groups}"' if groups else f"{token},{user},{user}")
        tokens = d / "tokens.csv"
        tokens.write_text("\n".join(lines) + "\n")
        tokens.chmod(0o600)

    def sign_certificate(self, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
        """A key ``<name>.key`` and a certificate ``<name>.crt`` signed by the test CA, in the temp
        dir; ``extensions`` are openssl x509 extension lines (e.g. extendedKeyUsage,
        subjectAltName). Returns (cert, key)."""
        assert self.dir is not None
        self._openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-out", f"{name}.key")
        (self.dir / f"{name}.ext").write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n" + extensions)
        self._openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr")
        self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                      "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"

    def _start_etcd_and_apiserver(self, deadline: float) -> None:
        """Start etcd and kube-apiserver together (the apiserver waits for etcd) until /readyz is ok.

        A port taken between picking it and binding it is retried with new ports (twice).
        """
        for attempt in range(3):
            try:
                self._try_start_etcd_and_apiserver(deadline)
                return
            except ControlPlaneError as e:
                if attempt == 2 or "address already in use" not in str(e):
                    raise
                self._stop_processes()

    def _try_start_etcd_and_apiserver(self, deadline: float) -> None:
        assert self.dir is not None and self.bin_dir is not None
        d = self.dir
        client, peer, secure = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{client}"
        data = d / "etcd"
        shutil.rmtree(data, ignore_errors=True)
        self.flags["etcd"] = [
            "--name=razor-test", f"--data-dir={data}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=razor-test=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync=true", "--log-level=warn",
        ]
        self.server = f"https://{self.bind_address}:{secure}"
        loopback = self.bind_address.startswith("127.")
        self.flags["kube-apiserver"] = [
            f"--etcd-servers={etcd_url}",
            f"--bind-address={self.bind_address}", f"--secure-port={secure}",
            f"--advertise-address={self.bind_address}",
            f"--tls-cert-file={d / 'apiserver.crt'}", f"--tls-private-key-file={d / 'apiserver.key'}",
            f"--token-auth-file={d / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            f"--kubelet-client-certificate={d / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={d / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={self.ca_file}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-issuer={self.server}",
            f"--service-account-key-file={d / 'sa.pub'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            "--profiling=false",
            f"--feature-gates={FEATURE_GATES}", f"--runtime-config={RUNTIME_CONFIG}",
        ]
        if loopback:
            # Loopback cannot be the kubernetes Service's endpoint: no reconciler, no error loop.
            self.flags["kube-apiserver"].append("--endpoint-reconciler-type=none")
        self._procs.append(_Process("etcd", [str(self.bin_dir / "etcd"), *self.flags["etcd"]],
                                    d / "etcd.log"))
        apiserver = _Process("kube-apiserver",
                             [str(self.bin_dir / "kube-apiserver"), *self.flags["kube-apiserver"]],
                             d / "kube-apiserver.log")
        self._procs.append(apiserver)

        last = ""
        while True:
            for p in self._procs:
                if not p.alive():
                    raise ControlPlaneError(
                        f"{p.name} exited ({p.popen.returncode}) during start-up; last lines of "
                        f"{p.log}:\n{p.tail()}")
            try:
                status, body = self.request("/readyz", timeout=2)
                if status == 200 and body.strip() == "ok":
                    return
                last = f"HTTP {status}: {body.strip()[:200]}"
            except (OSError, ssl.SSLError) as e:
                last = str(e)
            if time.monotonic() > deadline:
                _, verbose = self._safe_request("/readyz?verbose")
                raise ControlPlaneError(
                    f"kube-apiserver not ready at {self.server} after {self.start_timeout:.0f}s "
                    f"({last}).\n/readyz?verbose:\n{_tail_text(verbose, 30)}\n"
                    f"last lines of {apiserver.log}:\n{apiserver.tail()}")
            time.sleep(0.1)

    def _safe_request(self, path: str) -> tuple[int, str]:
        try:
            return self.request(path, timeout=2)
        except (OSError, ssl.SSLError) as e:
            return 0, str(e)

    def _kubeconfig_text(self, token: str) -> str:
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": CONTEXT, "cluster": {"server": self.server,
                                                       "certificate-authority-data": ca}}],
            "users": [{"name": "razor-test-user", "user": {"token": token}}],
            "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": "razor-test-user",
                                                       "namespace": "default"}}],
            "current-context": CONTEXT,
        }
        return yaml.safe_dump(config, sort_keys=False)

    def _write_kubeconfig(self) -> None:
        assert self.dir is not None
        self.kubeconfig = self.dir / "kubeconfig"
        self.kubeconfig.write_text(self._kubeconfig_text(self.token))
        self.kubeconfig.chmod(0o600)

    def _start_controller_manager(self, deadline: float) -> None:
        """Start kube-controller-manager; ready once its service-account controller has made the
        ``default`` ServiceAccount in the namespace ``default`` (so its controllers run)."""
        assert self.dir is not None and self.bin_dir is not None
        d = self.dir
        self.flags["kube-controller-manager"] = [
            f"--kubeconfig={self.kubeconfig}",
            f"--controllers={','.join(self.controllers)}",
            "--leader-elect=false",
            "--secure-port=0",  # no HTTPS endpoint of its own: nothing to authenticate, no port
            f"--service-account-private-key-file={d / 'sa.key'}",
            f"--root-ca-file={self.ca_file}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--profiling=false",
            f"--feature-gates={FEATURE_GATES}",
            *self.controller_flags,
        ]
        kcm = _Process("kube-controller-manager",
                       [str(self.bin_dir / "kube-controller-manager"),
                        *self.flags["kube-controller-manager"]],
                       d / "kube-controller-manager.log")
        self._procs.append(kcm)
        self._wait(lambda: self._safe_request(
            "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
            deadline, "kube-controller-manager did not create the default ServiceAccount", kcm)

    def _start_scheduler(self, deadline: float) -> None:
        """Start kube-scheduler (as system:kube-scheduler); ready when its healthz answers."""
        assert self.dir is not None and self.bin_dir is not None
        port = free_port()
        self.flags["kube-scheduler"] = [
            f"--kubeconfig={self.component_kubeconfig('kube-scheduler')}",
            f"--authentication-kubeconfig={self.component_kubeconfig('kube-scheduler')}",
            f"--authorization-kubeconfig={self.component_kubeconfig('kube-scheduler')}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={port}",
            "--profiling=false", f"--feature-gates={FEATURE_GATES}",
        ]
        sched = _Process("kube-scheduler", [str(self.bin_dir / "kube-scheduler"), *self.flags["kube-scheduler"]],
                         self.dir / "kube-scheduler.log")
        self._procs.append(sched)
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # its self-signed serving cert

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=2) as r:
                    return r.status == 200
            except (OSError, ssl.SSLError):
                return False

        self._wait(healthy, deadline, "kube-scheduler did not answer /healthz", sched)

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str, proc: _Process) -> None:
        while not ready():
            if not proc.alive():
                raise ControlPlaneError(f"{proc.name} exited ({proc.popen.returncode}) during start-up; "
                                        f"last lines of {proc.log}:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"{what} in {self.start_timeout:.0f}s; last lines of "
                                        f"{proc.log}:\n{proc.tail()}")
            time.sleep(0.1)

    def _stop_processes(self) -> None:
        """Controller manager and API server first (together), etcd last."""
        procs, self._procs = self._procs, []
        clients = [p for p in procs if p.name != "etcd"]
        for p in clients:
            if p.alive():
                p.popen.terminate()
        for p in clients:
            p.stop(self.stop_grace)
        for p in procs:
            if p.name == "etcd":
                p.stop(self.stop_grace)


if __name__ == "__main__":  # python tests/kube_cluster.py: start, time, print, stop
    t = time.monotonic()
    with ControlPlane(crds=[ROOT / "crds" / "razorjob.yaml"]) as cp:
        print(f"started in {cp.startup_seconds:.2f}s: {cp.server} (kubeconfig {cp.kubeconfig})")
        for name, flags in cp.flags.items():
            print(f"{name} {' '.join(flags)}")
        print(cp.kubectl("get", "namespaces,serviceaccounts,crds", "-A").stdout)
        t_stop = time.monotonic()
    print(f"stopped in {time.monotonic() - t_stop:.2f}s; total {time.monotonic() - t:.2f}s")
