"""A real one-node Kubernetes for tests: the control plane of kube_cluster.py with kube-scheduler,
and one node (containerd, runc, CNI bridge, kubelet, kube-proxy, CoreDNS) in a network namespace
of its own.

    with Cluster(crds=[...], images=["localhost/razor-trainer:test-cpu"]) as c:
        c.kubectl("apply", "-f", "job.yaml")      # its pods really run

What is real and what pretends (docs/testing.md says the same):

- Every component is the upstream one: kube-apiserver, kube-controller-manager (every default
  controller: Deployments, endpoint slices, node lifecycle and taint eviction, ...),
  kube-scheduler, kubelet and kube-proxy built from the ``k8s.io/kubernetes`` Go module
  (scripts/k8s-binaries.sh), Debian's containerd and runc, Debian's CNI plugins (bridge,
  host-local; containerd adds loopback), CoreDNS with its ``kubernetes`` plugin
  (scripts/node-tools.sh).
- Kubernetes' own gang scheduling is on (kube_cluster.FEATURE_GATES on kube-apiserver,
  kube-controller-manager and kube-scheduler, kube_cluster.RUNTIME_CONFIG on kube-apiserver):
  the PodGroup API scheduling.k8s.io/v1alpha2 and kube-scheduler's GangScheduling plugin.
- The node is a network namespace (``razor-node``), not a machine: the node's processes run on this
  host's filesystem and PID namespace, but everything they and the pods send goes over the
  namespace's own interfaces. The control plane listens on the host side of a veth pair
  (10.79.0.1), the node has 10.79.0.2, pods get 10.244.0.0/24 on the node's bridge. No route to
  any other network exists; the host's own routes and firewall are untouched (kube-proxy's and
  the CNI plugin's iptables rules live in the node's namespace).
- CoreDNS runs as a process of the node (a node-local DNS, at the node's address) rather than as a
  Deployment behind a ClusterIP: pods resolve ``<pod>.<service>.<ns>.svc`` through it exactly as
  on a cluster. It reads the API as the admin.
- In-cluster clients reach the API server at the ``kubernetes`` Service's ClusterIP (10.0.0.1),
  through kube-proxy's rules, with their ServiceAccount tokens, as on a cluster.
- The node monitor grace period is 20 s (Kubernetes' default: 50 s), so that a lost node is
  noticed within a test's patience.
- Images enter the node without a registry: podman-built images are saved and imported into
  containerd's ``k8s.io`` namespace (containerd's image store is kept in the cache between runs,
  so an unchanged image is imported once).

One such cluster per machine at a time (fixed names; a lock file says so). Needs root.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import yaml

from kube_cluster import ROOT, ControlPlane, ControlPlaneError, KubectlError, _Process, _tail_text, find_binaries

NODE_TOOLS = ROOT / "scripts" / "node-tools.sh"
NETNS = "razor-node"
NODE_NAME = "razor-node"
HOST_IF, NODE_IF = "rzk0", "rzk1"
HOST_IP, NODE_IP = "10.79.0.1", "10.79.0.2"
PREFIX = 24
CLUSTER_CIDR = "10.244.0.0/16"
POD_SUBNET = "10.244.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
BRIDGE = "rzk-cni0"
#: Stable paths, so that a later run finds (and cleans) what a killed one left.
RUN_DIR = Path("/run/razor-node")
SOCKET = RUN_DIR / "containerd.sock"
NODE_MONITOR_GRACE = 20
RAZOR_CACHE = Path(os.environ.get("RAZOR_CACHE", Path.home() / ".cache" / "razor"))
CONTAINERD_ROOT = RAZOR_CACHE / "node" / "containerd"
NODE_BINARIES = ("kube-scheduler", "kubelet", "kube-proxy")


class NodeError(ControlPlaneError):
    """The node could not be started (the message carries the relevant log tail)."""


def node_tools(timeout: float = 3600) -> Path:
    """The bin dir of scripts/node-tools.sh (CoreDNS, the pause image's archive)."""
    out = subprocess.run([str(NODE_TOOLS)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise NodeError(f"{NODE_TOOLS} failed (exit {out.returncode}):\n{_tail_text(out.stderr)}")
    return Path(lines[-1])


def _run(*argv: str, check: bool = True, timeout: float = 60, input: str | bytes | None = None
         ) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if check and out.returncode != 0:
        raise NodeError(f"{' '.join(argv)} exited {out.returncode}: {out.stderr.strip()[-2000:]}")
    return out


def in_node(*argv: str) -> list[str]:
    """``argv`` run in the node's network namespace (only that: the mounts stay the host's, so the
    kubelet's volume mounts are the ones containerd sees)."""
    return ["nsenter", f"--net=/run/netns/{NETNS}", "--", *argv]


def ctr(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return _run("ctr", "--address", str(SOCKET), "--namespace", "k8s.io", *args, check=check,
                timeout=timeout)


def _mounts_under(*dirs: Path) -> list[str]:
    """Mount points below any of ``dirs``, deepest first."""
    prefixes = tuple(str(d).rstrip("/") + "/" for d in dirs)
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point.startswith(prefixes):
            points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def _unmount_under(*dirs: Path) -> None:
    for point in _mounts_under(*dirs):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


class Cluster:
    """The control plane (with kube-scheduler) and one real node; a context manager.

    ``cp`` is the :class:`kube_cluster.ControlPlane` (``cp.kubectl``, ``cp.env()``, ...);
    ``images`` (podman image names) are imported into the node before it registers.
    """

    def __init__(self, *, crds: Sequence[Path | str] = (), images: Sequence[str] = (),
                 start_timeout: float = 120, keep: bool | None = None) -> None:
        self.crds = list(crds)
        self.images = list(images)
        self.start_timeout = start_timeout
        self.keep = keep if keep is not None else os.environ.get("RAZOR_K8S_KEEP") == "1"
        self.cp = ControlPlane(crds=self.crds, bind_address=HOST_IP, controllers=("*",),
                               controller_flags=[f"--node-monitor-grace-period={NODE_MONITOR_GRACE}s",
                                                 f"--cluster-cidr={CLUSTER_CIDR}"],
                               scheduler=True, node_names=(NODE_NAME,), keep=self.keep,
                               start_timeout=start_timeout)
        self.dir: Path | None = None
        self.startup_seconds = 0.0
        self.timings: dict[str, float] = {}
        self._procs: dict[str, _Process] = {}
        self._lock: int | None = None
        self.tools: Path | None = None

    # ---- context manager ---------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---- public API --------------------------------------------------------------------------------
    def kubectl(self, *args: str, **kw) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl(*args, **kw)

    def env(self, base=None) -> dict[str, str]:
        return self.cp.env(base)

    def start(self) -> None:
        t0 = time.monotonic()
        self.cp.bin_dir = find_binaries()
        missing = [b for b in NODE_BINARIES if not os.access(self.cp.bin_dir / b, os.X_OK)]
        if missing:
            raise NodeError(f"not built in {self.cp.bin_dir}: {', '.join(missing)} (scripts/k8s-binaries.sh)")
        self.tools = node_tools()
        self._timed("tools", t0)
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(RUN_DIR / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NodeError(f"another test cluster with a node runs on this machine ({RUN_DIR}/lock)") from None
        self.dir = Path(tempfile.mkdtemp(prefix="razor-node-"))
        try:
            self._clean_leftovers()
            self._network_up()
            self._timed("network", t0)
            self.cp.start()
            self._timed("control plane", t0)
            self._start_containerd()
            self._import_images([("pause", str(self.tools / "pause.tar"))]
                                + [(image, None) for image in self.images])
            self._timed("containerd and images", t0)
            self._start_coredns()
            self._start_kubelet()
            self._start_kube_proxy()
            self._wait_ready()
            self._timed("node ready", t0)
        except BaseException as e:
            logs = self.dir
            self.keep = self.cp.keep = True
            self.stop()
            if isinstance(e, ControlPlaneError):
                raise NodeError(f"{e}\n(node logs in {logs}, control plane logs in {self.cp.dir})") from None
            raise
        self.startup_seconds = time.monotonic() - t0

    def stop(self) -> None:
        """Stop the node (kubelet first, then every container, then containerd), the control plane,
        and remove the network namespace and the temp dirs (kept with ``keep``)."""
        for name in ("kube-proxy", "kubelet", "coredns"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                proc.stop(5)
        self._remove_containers()
        proc = self._procs.pop("containerd", None)
        if proc is not None:
            proc.stop(10)
        self._clean_leftovers()
        self.cp.stop()
        if self.dir is not None and not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def stop_kubelet(self) -> None:
        """Stop the kubelet as a lost node's would (SIGKILL: it says goodbye to nobody). Its
        containers keep running under containerd, as on a partitioned machine."""
        proc = self._procs.pop("kubelet")
        proc.popen.kill()
        proc.popen.wait(10)

    def start_kubelet(self) -> None:
        """Start the kubelet again (after :meth:`stop_kubelet`)."""
        self._start_kubelet(restart=True)

    def node_ready(self) -> bool:
        out = self.kubectl("get", "node", NODE_NAME, "-o",
                           "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
        return out.returncode == 0 and out.stdout.strip() == "True"

    def log(self, component: str, lines: int = 60) -> str:
        proc = self._procs.get(component)
        if proc is not None:
            return proc.tail(lines)
        assert self.dir is not None
        path = self.dir / f"{component}.log"
        return _tail_text(path.read_text(errors="replace"), lines) if path.exists() else "(no log)"

    # ---- start-up ----------------------------------------------------------------------------------
    def _timed(self, what: str, t0: float) -> None:
        self.timings[what] = time.monotonic() - t0

    def _spawn(self, name: str, argv: list[str]) -> _Process:
        assert self.dir is not None
        proc = _Process(name, in_node(*argv), self.dir / f"{name}.log")
        self._procs[name] = proc
        return proc

    def _wait(self, ready: Callable[[], bool], what: str, proc: _Process | None, timeout: float | None = None
              ) -> None:
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while not ready():
            if proc is not None and not proc.alive():
                raise NodeError(f"{proc.name} exited ({proc.popen.returncode}); last lines of {proc.log}:\n"
                                f"{proc.tail()}")
            if time.monotonic() > deadline:
                tail = f"; last lines of {proc.log}:\n{proc.tail()}" if proc else ""
                raise NodeError(f"{what} after {timeout or self.start_timeout:.0f}s{tail}")
            time.sleep(0.2)

    def _clean_leftovers(self) -> None:
        """What a killed run (or this one) left: processes in the node's namespace, containerd's
        shims, pod network namespaces, mounts, the namespace and its veth pair."""
        if Path(f"/run/netns/{NETNS}").exists():
            pids = _run("ip", "netns", "pids", NETNS, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        # Shims are daemons of their own (not in the namespace's process list once reparented).
        subprocess.run(["pkill", "-KILL", "-f", f"containerd-shim.*-address {SOCKET}"], capture_output=True)
        for ns in Path("/run/netns").glob("cni-*") if Path("/run/netns").is_dir() else ():
            # Pod sandboxes' namespaces: only containerd's CRI names them so.
            _run("ip", "netns", "delete", ns.name, check=False)
        dirs = [RUN_DIR / "state", CONTAINERD_ROOT]
        dirs += [Path(p) for p in Path(tempfile.gettempdir()).glob("razor-node-*")]
        _unmount_under(*dirs)
        shutil.rmtree(RUN_DIR / "state", ignore_errors=True)
        SOCKET.unlink(missing_ok=True)
        if Path(f"/run/netns/{NETNS}").exists():
            _run("ip", "netns", "delete", NETNS, check=False)
        _run("ip", "link", "delete", HOST_IF, check=False)

    def _network_up(self) -> None:
        _run("ip", "netns", "add", NETNS)
        _run("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NODE_IF)
        _run("ip", "link", "set", NODE_IF, "netns", NETNS)
        _run("ip", "addr", "add", f"{HOST_IP}/{PREFIX}", "dev", HOST_IF)
        _run("ip", "link", "set", HOST_IF, "up")
        _run("ip", "-n", NETNS, "link", "set", "lo", "up")
        _run("ip", "-n", NETNS, "addr", "add", f"{NODE_IP}/{PREFIX}", "dev", NODE_IF)
        _run("ip", "-n", NETNS, "link", "set", NODE_IF, "up")
        # The node routes for its pods (per-namespace setting; the host's stays as it is).
        _run(*in_node("sysctl", "-qw", "net.ipv4.ip_forward=1"))

    def _start_containerd(self) -> None:
        assert self.dir is not None and self.tools is not None
        CONTAINERD_ROOT.mkdir(parents=True, exist_ok=True)
        cni_conf = self.dir / "net.d"
        cni_conf.mkdir()
        (cni_conf / "10-razor.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "razor",
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.dir / "ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ]}, indent=1))
        cri = '"io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{RUN_DIR / 'state'}"
[grpc]
  address = "{SOCKET}"
[plugins.{cri}]
  sandbox_image = "localhost/razor-pause:1"
  # root here cannot lower oom_score_adj (the sandbox's -998 would fail to start)
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins.{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins.{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.{cri}.containerd.runtimes.runc.options]
        BinaryName = "{shutil.which('runc') or 'runc'}"
        SystemdCgroup = false
  [plugins.{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
"""
        (self.dir / "containerd.toml").write_text(config)
        proc = self._spawn("containerd", ["containerd", "--config", str(self.dir / "containerd.toml")])
        self._wait(lambda: SOCKET.exists() and ctr("version", check=False).returncode == 0,
                   "containerd did not answer on its socket", proc)

    def _import_images(self, images: list[tuple[str, str | None]]) -> None:
        """Import each image (a podman name, or ``(name, docker archive)``) unless containerd has
        it already, as the same podman image (a stamp per name in containerd's root)."""
        stamps_file = CONTAINERD_ROOT / "razor-images.json"
        stamps = json.loads(stamps_file.read_text()) if stamps_file.exists() else {}
        have = set(ctr("images", "ls", "-q").stdout.split())
        for name, archive in images:
            if archive is not None:
                key = Path(archive).stat().st_mtime_ns
                ref = "localhost/razor-pause:1"
            else:
                key = _run("podman", "image", "inspect", "--format", "{{.Id}}", name).stdout.strip()
                ref = name
            if ref in have and stamps.get(ref) == key:
                continue
            t0 = time.monotonic()
            if archive is not None:
                ctr("images", "import", archive, timeout=600)
            else:
                save = subprocess.Popen(["podman", "save", "--format", "docker-archive", name],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                try:
                    imp = subprocess.run(["ctr", "--address", str(SOCKET), "--namespace", "k8s.io", "images",
                                          "import", "-"], stdin=save.stdout, capture_output=True, text=True,
                                         timeout=1800)
                finally:
                    assert save.stdout is not None
                    save.stdout.close()
                    save.wait(60)
                if save.returncode != 0 or imp.returncode != 0:
                    raise NodeError(f"importing {name} into containerd failed: "
                                    f"{save.stderr.read().decode(errors='replace')[-1000:] if save.stderr else ''}"
                                    f"{imp.stderr[-2000:]}")
            if ref not in set(ctr("images", "ls", "-q").stdout.split()):
                raise NodeError(f"{ref} is not in containerd after the import")
            stamps[ref] = key
            stamps_file.write_text(json.dumps(stamps, indent=1))
            self.timings[f"import {ref}"] = time.monotonic() - t0

    def _start_coredns(self) -> None:
        assert self.dir is not None and self.tools is not None
        corefile = self.dir / "Corefile"
        corefile.write_text(f""".:53 {{
    errors
    health 127.0.0.1:8080
    ready 127.0.0.1:8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.cp.kubeconfig} razor-test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
    loadbalance
}}
""")
        proc = self._spawn("coredns", [str(self.tools / "coredns"), "-conf", str(corefile)])
        self._wait(lambda: _run(*in_node("python3", "-c", _HTTP_OK, "http://127.0.0.1:8181/ready"),
                                check=False).returncode == 0, "CoreDNS not ready", proc)

    def _start_kubelet(self, restart: bool = False) -> None:
        assert self.dir is not None and self.cp.bin_dir is not None
        d = self.dir
        if not restart:
            cert, key = self.cp.sign_certificate(
                "kubelet-serving", f"/O=system:nodes/CN=system:node:{NODE_NAME}",
                f"extendedKeyUsage=serverAuth\nsubjectAltName=IP:{NODE_IP},DNS:{NODE_NAME}\n")
            config = {
                "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                # This machine boots with cgroup v1 (hybrid) and no systemd.
                "failCgroupV1": False, "cgroupDriver": "cgroupfs",
                "containerRuntimeEndpoint": f"unix://{SOCKET}",
                "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                                   "x509": {"clientCAFile": str(self.cp.ca_file)}},
                "authorization": {"mode": "AlwaysAllow"},
                "tlsCertFile": str(cert), "tlsPrivateKeyFile": str(key),
                "address": NODE_IP, "port": 10250, "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1",
                "healthzPort": 10248,
                "clusterDNS": [NODE_IP], "clusterDomain": CLUSTER_DOMAIN, "resolvConf": "",
                "failSwapOn": False,
                "podLogsDir": str(d / "pod-logs"), "volumePluginDir": str(d / "volume-plugins"),
                # Never evict for disk or collect imported images: the images cannot be pulled again.
                "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                                 "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
                "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
                "serializeImagePulls": False,
                "nodeStatusUpdateFrequency": "5s",
                "maxPods": 110,
            }
            (d / "kubelet.yaml").write_text(yaml.safe_dump(config))
        argv = [str(self.cp.bin_dir / "kubelet"), f"--config={d / 'kubelet.yaml'}",
                f"--kubeconfig={self.cp.component_kubeconfig(f'kubelet-{NODE_NAME}')}",
                f"--root-dir={d / 'kubelet'}", f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}",
                "--v=1"]
        if restart:
            # The log of the first kubelet stays for a look.
            (d / "kubelet.log").rename(d / f"kubelet-{int(time.time())}.log")
        self.cp.flags["kubelet"] = argv[1:]
        self._spawn("kubelet", argv)

    def _start_kube_proxy(self) -> None:
        assert self.dir is not None and self.cp.bin_dir is not None
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.cp.component_kubeconfig("kube-proxy"))},
            "mode": "iptables", "clusterCIDR": CLUSTER_CIDR, "hostnameOverride": NODE_NAME,
            "bindAddress": NODE_IP, "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # Leave the kernel's conntrack settings alone (global, not the namespace's).
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
            "iptables": {"localhostNodePorts": False},
        }
        (self.dir / "kube-proxy.yaml").write_text(yaml.safe_dump(config))
        self._spawn("kube-proxy", [str(self.cp.bin_dir / "kube-proxy"), f"--config={self.dir / 'kube-proxy.yaml'}"])

    def _wait_ready(self) -> None:
        self._wait(self.node_ready, f"node {NODE_NAME} not Ready", self._procs["kubelet"])

        def service_rules() -> bool:
            out = _run(*in_node("iptables", "-t", "nat", "-S", "KUBE-SERVICES"), check=False)
            return out.returncode == 0 and "default/kubernetes:https" in out.stdout

        self._wait(service_rules, "kube-proxy wrote no rule for the kubernetes Service",
                   self._procs["kube-proxy"])

    def _remove_containers(self) -> None:
        """Kill and remove every container containerd runs for the node (pods and sandboxes)."""
        if "containerd" not in self._procs:
            return
        tasks = ctr("tasks", "ls", "-q", check=False).stdout.split()
        for task in tasks:
            ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task, check=False)
        deadline = time.monotonic() + 20
        while tasks and time.monotonic() < deadline:
            for task in tasks:
                ctr("tasks", "delete", task, check=False)
            tasks = ctr("tasks", "ls", "-q", check=False).stdout.split()
        containers = ctr("containers", "ls", "-q", check=False).stdout.split()
        if containers:
            ctr("containers", "delete", *containers, check=False)


#: A tiny HTTP probe run in the node's namespace (curl is not a dependency).
_HTTP_OK = ("import sys, urllib.request\n"
            "sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)")


__all__ = ["Cluster", "NodeError", "KubectlError", "NODE_NAME", "NODE_IP", "HOST_IP", "in_node", "ctr"]


if __name__ == "__main__":  # python tests/kube_node.py: start, show, stop
    with Cluster(crds=[ROOT / "crds" / "razorjob.yaml"]) as c:
        print(f"started in {c.startup_seconds:.1f}s: {json.dumps(c.timings)}")
        print(c.kubectl("get", "nodes,pods,services", "-A", "-o", "wide").stdout)
