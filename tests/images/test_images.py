"""The container images of images/, built for real with podman (see conftest.py) and started.

The operator image answers ``--help`` as the chart runs it (UID 65532, read-only root
filesystem, /tmp a tmpfs, no capabilities). The trainer image (CPU variant) trains the digits
for one epoch from nothing but what the operator would give its pod: the pod razor.kube
renders for rank 0 of a 1-node CPU job, turned into ``podman run`` flags (its env, args,
hostname, volumes, and the DNS name of MASTER_ADDR), with the work dir a host folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from conftest import job_doc
from razor import kube
from razor.spec import parse_job

from .conftest import ROOT, Images, inspect, podman, podman_run

pytestmark = pytest.mark.images

UID = GID = 65532
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CONSTRAINTS = {line.strip().lower() for line in (ROOT / "images" / "constraints.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
# The chart's securityContext (charts/razor/values.yaml) and its /tmp emptyDir, as podman flags.
CHART_SECURITY = ["--read-only", "--read-only-tmpfs=false", "--mount", "type=tmpfs,destination=/tmp",
                  "--cap-drop", "all", "--security-opt", "no-new-privileges"]


def pod_to_podman(pod: dict[str, Any], image: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``podman run`` flags and arguments that give the container what Kubernetes would give the
    pod: its env and args, its hostname, its volumes (hostPath: a bind mount; emptyDir: a
    tmpfs) and its working dir; and, as the headless Service would, MASTER_ADDR's name for this
    pod (rank 0 is the master). The pod's command must be the image's entrypoint, so that the
    image run with the args alone is what the pod runs."""
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["command"] == image["Config"]["Entrypoint"], \
        f"the pod runs {container['command']}, the image's entrypoint is {image['Config']['Entrypoint']}"
    env = {e["name"]: e["value"] for e in container["env"]}
    flags = ["--hostname", spec["hostname"], "--add-host", f"{env['MASTER_ADDR']}:127.0.0.1"]
    for name, value in env.items():
        flags += ["--env", f"{name}={value}"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            flags += ["--volume", f"{volume['hostPath']['path']}:{mount['mountPath']}"]
        elif "emptyDir" in volume or "projected" in volume:
            # A projected volume is the progress token the kubelet writes; with no operator to
            # report to (the pod has no RAZOR_PROGRESS_URL), an empty folder stands in.
            flags += ["--mount", f"type=tmpfs,destination={mount['mountPath']}"]
        else:
            raise AssertionError(f"no podman form for the volume {volume}")
    if container.get("workingDir"):
        flags += ["--workdir", container["workingDir"]]
    return flags, list(container["args"])


def test_operator_image_answers_help_as_the_chart_runs_it(images: Images):
    out = podman_run(images.operator, ["--help"], CHART_SECURITY, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("usage: razor-operator")
    for flag in ("--namespace", "--kubeconfig", "--liveness", "--metrics-port", "--standalone",
                 "--peering", "--host-port-range", "--workers", "--handler-threads"):
        assert flag in out.stdout, f"{flag} missing from the image's --help:\n{out.stdout}"
    # The very help of the code in this checkout (same width).
    host = subprocess.run([sys.executable, "-m", "razor_operator.main", "--help"], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "80"}, timeout=120)
    image = podman_run(images.operator, ["--help"], ["--env", "COLUMNS=80", *CHART_SECURITY])
    assert image.stdout == host.stdout
    # Who it runs as, with nothing given: the image's own user, 65532, not root.
    who = podman_run(images.operator, ["-c", "import os, kopf, razor_operator.handlers; "
                                             "print(os.getuid(), os.getgid(), os.environ['HOME'])"],
                     ["--entrypoint", "python", *CHART_SECURITY])
    assert who.returncode == 0, who.stderr
    assert who.stdout.split() == [str(UID), str(GID), "/home/razor"]
    config = inspect(images.operator)["Config"]
    assert config["User"] == f"{UID}:{GID}" and config["Entrypoint"] == ["razor-operator"]


def test_trainer_image_trains_one_epoch_with_the_env_the_operator_sets(images: Images, tmp_path: Path):
    image = inspect(images.trainer)
    assert image["Config"]["User"] == f"{UID}:{GID}"
    workdir = image["Config"]["WorkingDir"]
    host_work = tmp_path / "work_dirs"
    host_work.mkdir()
    os.chown(host_work, UID, GID)   # as a volume for the pod's user (fsGroup, or a PVC's owner)
    job = parse_job(job_doc(
        "digits", config="trainer/configs/digits_mlp.yaml", nnodes=1, gpusPerNode=0,
        image=images.trainer, cfgOptions={"schedule.epochs": 1},
        volumes=[{"name": "work", "hostPath": {"path": str(host_work)}}],
        volumeMounts=[{"name": "work", "mountPath": f"{workdir}/work_dirs"}]))
    pod = kube.pod(job, 0, "default")
    assert pod["spec"]["containers"][0]["image"] == images.trainer
    flags, args = pod_to_podman(pod, image)
    out = podman_run(images.trainer, args, flags, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert "razor trainer: trainer/configs/digits_mlp.yaml on 1 process(es), cpu (gloo)" in log
    assert "razor: done. model accuracy" in log
    # What it wrote is on the host, under the default work dir work_dirs/digits_mlp.
    wd = host_work / "digits_mlp"
    summary = json.loads((wd / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["world_size"] == 1
    assert summary["accuracy"] >= 0.7, summary
    assert (wd / "last_checkpoint").read_text().strip() == "epoch_1.pth"
    assert (wd / "epoch_1.pth").stat().st_size > 0
    # Written by the image's non-root user, not by root.
    for path in (wd, wd / "epoch_1.pth", wd / "summary.json"):
        assert (path.stat().st_uid, path.stat().st_gid) == (UID, GID), path


def test_trainer_image_without_the_contract_says_what_is_missing(images: Images):
    usage = podman_run(images.trainer, timeout=120)
    assert usage.returncode == 2 and "usage: python -m razor.node" in usage.stderr
    out = podman_run(images.trainer, ["-m", "razor_trainer", "trainer/configs/digits_mlp.yaml"], timeout=120)
    assert out.returncode == 1
    assert ("the launcher contract is incomplete: NNODES, NODE_RANK, NPROC_PER_NODE, MASTER_ADDR, "
            "MASTER_PORT not set") in out.stderr


@pytest.mark.parametrize("which", ["operator", "trainer"])
def test_images_install_the_pinned_versions_and_carry_no_build_leftovers(images: Images, which: str):
    tag = getattr(images, which)
    labels = inspect(tag)["Config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == f"razor-{which}"
    assert labels["org.opencontainers.image.version"] == PROJECT["version"]
    if which == "trainer":
        assert labels["dev.razor.variant"] == "cpu"
    # Every installed distribution is one of images/constraints.txt's pins (razor aside).
    freeze = podman_run(tag, ["-m", "pip", "freeze", "--all", "--exclude-editable"],
                        ["--entrypoint", "python"], timeout=120)
    assert freeze.returncode == 0, freeze.stderr
    installed = {line.strip().lower() for line in freeze.stdout.splitlines()
                 if line.strip() and not line.lower().startswith(("razor==", "razor @"))}
    assert installed <= CONSTRAINTS, f"not pinned: {sorted(installed - CONSTRAINTS)}"
    extra = "torch" if which == "trainer" else "kopf"
    assert any(line.startswith(f"{extra}==") for line in installed)
    # No wheel, pip cache, apt list or build file in any layer's final state (looked at as root).
    leftovers = podman_run(tag, ["-c", "ls -d /wheels /tmp/razor /root/.cache/pip 2>/dev/null; "
                                       "ls /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial; "
                                       "find /opt/venv /home /app -name '*.whl' 2>/dev/null; true"],
                           ["--entrypoint", "sh", "--user", "0"], timeout=120)
    assert leftovers.returncode == 0 and leftovers.stdout.strip() == "", leftovers.stdout


def test_build_context_holds_only_what_the_images_are_built_from(images: Images, tmp_path: Path):
    """.dockerignore: what `podman build .` from the repository root sends, copied whole."""
    containerfile = tmp_path / "Containerfile"
    containerfile.write_text(f"FROM {images.base}\nCOPY . /context/\n")
    tag = "localhost/razor-context-check:test"
    podman("build", "--isolation", "chroot", "--force-rm", "-f", str(containerfile), "-t", tag,
           str(ROOT), timeout=300)
    try:
        out = podman_run(tag, ["sh", "-c", "du -sk /context; cd /context && find . | sort"], timeout=120)
    finally:
        podman("rmi", "-f", tag, check=False)
    assert out.returncode == 0, out.stderr
    du, *paths = out.stdout.splitlines()
    size_kb = int(du.split()[0])
    top = {p.split("/")[1] for p in paths if p != "."}
    assert top == {"pyproject.toml", "README.md", "razor", "trainer", "operator", "examples", "images"}, top
    assert not [p for p in paths if "__pycache__" in p or p.endswith(".pyc") or ".egg-info" in p]
    assert {p for p in paths if p.startswith("./operator/")} >= {"./operator/razor_operator"}
    assert not [p for p in paths if p.startswith("./operator/") and not p.startswith("./operator/razor_operator")]
    assert size_kb < 2048, f"the build context is {size_kb} KiB"
