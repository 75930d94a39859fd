"""`make images` and `make push-images`: the commands they would run (``make -n``), not the builds.

The names must be the ones the rest of razor uses: the chart's operator image
(``image.repository:appVersion``), and the trainer's CUDA build and CPU variant that a RazorJob
without an image runs (razor/spec.py).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tomllib

import pytest
import yaml

from conftest import ROOT
from razor.spec import DEFAULT_CPU_IMAGE, DEFAULT_IMAGE

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def builds(*args: str) -> dict[str, list[str]]:
    """``make -n images ARGS``: each build command's words, by the tag it makes."""
    out = make("-n", "images", *args)
    assert out.returncode == 0, out.stderr
    commands = [shlex.split(c) for c in out.stdout.replace("\\\n", " ").splitlines() if c.strip()]
    assert all(c[:2] == ["docker", "build"] and c[-1] == "." for c in commands), commands
    return {c[c.index("-t") + 1]: c for c in commands}


def build_arg(command: list[str], name: str) -> str | None:
    values = [command[i + 1].split("=", 1)[1] for i, w in enumerate(command)
              if w == "--build-arg" and command[i + 1].startswith(f"{name}=")]
    return values[-1] if values else None


def test_make_images_builds_the_three_images_under_the_registry():
    repo = "registry.example.com:5000/team"
    cmds = builds(f"IMAGE_REPO={repo}", "ENGINE=docker")
    operator, cuda, cpu = (f"{repo}/razor-operator:{VERSION}", f"{repo}/razor-trainer:{VERSION}",
                           f"{repo}/razor-trainer:{VERSION}-cpu")
    assert set(cmds) == {operator, cuda, cpu}
    assert cmds[operator][cmds[operator].index("-f") + 1] == "images/operator/Dockerfile"
    for tag in (cuda, cpu):
        assert cmds[tag][cmds[tag].index("-f") + 1] == "images/trainer/Dockerfile"
    assert build_arg(cmds[cuda], "VARIANT") == "cuda" and build_arg(cmds[cuda], "BASE_IMAGE") is None
    # The CPU variant on a base without CUDA (build.sh refuses VARIANT=cpu on a CUDA base).
    assert build_arg(cmds[cpu], "VARIANT") == "cpu"
    assert "cuda" not in build_arg(cmds[cpu], "BASE_IMAGE")
    # A trailing slash is no second slash; a wheelhouse becomes the build context `wheels`.
    assert operator in builds(f"IMAGE_REPO={repo}/", "ENGINE=docker")
    assert all("--build-context" in c and "wheels=/w" in c for c in builds("WHEELS=/w", "ENGINE=docker").values())


def test_without_a_registry_the_names_are_the_ones_razor_and_the_chart_use():
    values = yaml.safe_load((ROOT / "charts" / "razor" / "values.yaml").read_text())
    chart = yaml.safe_load((ROOT / "charts" / "razor" / "Chart.yaml").read_text())
    operator = f"{values['image']['repository']}:{values['image']['tag'] or chart['appVersion']}"
    assert set(builds("ENGINE=docker")) == {operator, DEFAULT_IMAGE, DEFAULT_CPU_IMAGE}
    assert (values["defaults"]["image"], values["defaults"]["cpuImage"]) == (DEFAULT_IMAGE, DEFAULT_CPU_IMAGE)


def test_push_images_pushes_the_three_and_needs_a_registry():
    out = make("-n", "push-images", "IMAGE_REPO=registry.example.com/team", "ENGINE=podman")
    assert out.returncode == 0, out.stderr
    pushed = [c.split()[2] for c in out.stdout.splitlines() if c.startswith("podman push ")]
    assert pushed == [f"registry.example.com/team/razor-operator:{VERSION}",
                      f"registry.example.com/team/razor-trainer:{VERSION}",
                      f"registry.example.com/team/razor-trainer:{VERSION}-cpu"]
    out = make("push-images", "ENGINE=podman")
    assert out.returncode != 0 and "give the registry, e.g. IMAGE_REPO=" in out.stderr
