"""The one-node cluster itself does what a real one does: pods run in containerd, their logs come
from the kubelet through the API server, names resolve through CoreDNS, and in-cluster clients
reach the API server through the ``kubernetes`` Service with their ServiceAccount tokens."""

from __future__ import annotations

import json

import yaml

from conftest import eventually
from kube_node import NODE_NAME, Cluster

from .conftest import get_json


def pod(name: str, image: str, script: str, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"restartPolicy": "Never", **spec,
                     "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never",
                                     "command": ["python3", "-c", script]}]}}


def apply(kube: Cluster, namespace: str, *docs: dict) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))


def phase(kube: Cluster, namespace: str, name: str) -> str:
    obj = get_json(kube, "pod", name, "-n", namespace)
    return (obj or {}).get("status", {}).get("phase", "")


def test_the_node_is_ready_and_runs_a_pod_whose_logs_the_kubelet_serves(kube: Cluster, namespace: str,
                                                                         node_images):
    node = get_json(kube, "node", NODE_NAME)
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"].startswith("v1.36."), info
    assert info["containerRuntimeVersion"].startswith("containerd://"), info
    apply(kube, namespace, pod("hello", node_images[1], "import socket; print('hello from', socket.gethostname())"))
    eventually(lambda: phase(kube, namespace, "hello") == "Succeeded", 120, "the pod to succeed")
    obj = get_json(kube, "pod", "hello", "-n", namespace)
    assert obj["spec"]["nodeName"] == NODE_NAME           # kube-scheduler bound it
    assert obj["status"]["podIP"].startswith("10.244.")  # the CNI bridge's range
    logs = kube.kubectl("logs", "-n", namespace, "hello").stdout
    assert logs == "hello from hello\n"


def test_a_headless_services_pod_name_resolves_in_another_pod(kube: Cluster, namespace: str, node_images):
    """What MASTER_ADDR relies on: <hostname>.<subdomain>.<namespace>.svc, from a pod's resolv.conf."""
    image = node_images[1]
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "grp"},
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"app": "target"},
                        "ports": [{"name": "p", "port": 29500}]}}
    target = pod("target", image, "import time; time.sleep(600)", hostname="target-0", subdomain="grp")
    target["metadata"]["labels"] = {"app": "target"}
    resolve = pod("resolver", image,
                  f"import socket, time\nfor _ in range(60):\n"
                  f"    try:\n        print(socket.gethostbyname('target-0.grp.{namespace}.svc')); break\n"
                  f"    except OSError:\n        time.sleep(1)\n")
    apply(kube, namespace, service, target)
    eventually(lambda: phase(kube, namespace, "target") == "Running", 120, "the target pod to run")
    apply(kube, namespace, resolve)
    eventually(lambda: phase(kube, namespace, "resolver") == "Succeeded", 120, "the resolver to finish")
    ip = get_json(kube, "pod", "target", "-n", namespace)["status"]["podIP"]
    assert kube.kubectl("logs", "-n", namespace, "resolver").stdout.strip() == ip


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service(kube: Cluster, namespace: str,
                                                                      node_images):
    """In-cluster config: KUBERNETES_SERVICE_HOST (the ClusterIP, via kube-proxy's rules), the
    projected ServiceAccount token and the cluster's CA (kube-root-ca.crt)."""
    script = (
        "import json, os, ssl, urllib.request\n"
        "sa = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "ctx = ssl.create_default_context(cafile=sa + '/ca.crt')\n"
        "host, port = os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT']\n"
        "req = urllib.request.Request(f'https://{host}:{port}/api/v1/namespaces/' + open(sa + '/namespace').read()"
        " + '/serviceaccounts/default', headers={'Authorization': 'Bearer ' + open(sa + '/token').read()})\n"
        "try:\n    urllib.request.urlopen(req, context=ctx, timeout=10)\n"
        "except urllib.error.HTTPError as e:\n    print(json.dumps({'host': host, 'code': e.code}))\n")
    apply(kube, namespace, pod("incluster", node_images[1], script))
    eventually(lambda: phase(kube, namespace, "incluster") in ("Succeeded", "Failed"), 120, "the pod to end")
    out = kube.kubectl("logs", "-n", namespace, "incluster").stdout
    # Authenticated as system:serviceaccount:<ns>:default, which may not read ServiceAccounts: 403.
    assert json.loads(out) == {"host": "10.0.0.1", "code": 403}, out
