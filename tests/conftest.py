"""Shared helpers: the repository's paths and a way to write RazorJob files and run razorctl."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: Test folders whose tests need a real system; each folder's name is its pytest marker.
SYSTEM_FOLDERS = ("k8s", "slurm", "helm", "images", "node")
CONFIGS = ROOT / "trainer" / "configs"
DATA = Path(__file__).resolve().parent / "data"


def job_doc(name: str = "t", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "razor.dev/v1alpha1", "kind": "RazorJob",
            "metadata": {"name": name}, "spec": spec}


def write_job(path: Path, name: str = "t", **spec: Any) -> Path:
    path.write_text(yaml.safe_dump(job_doc(name, **spec), sort_keys=False))
    return path


def env_for_tests() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def razorctl(*args: str, cwd: Path, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess:
    """Run razorctl as a user would, from the project's environment."""
    return subprocess.run([sys.executable, "-m", "razor.cli", *args], cwd=cwd, env=env_for_tests(),
                          capture_output=True, text=True, timeout=timeout, **kw)


def razorctl_popen(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "razor.cli", *args], cwd=cwd, env=env_for_tests(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def eventually(fn: Callable[[], Any], timeout: float = 30, what: str = "condition",
               interval: float = 0.1) -> Any:
    """``fn()``'s first true value, polling until ``timeout`` seconds; an AssertionError saying
    what was awaited and the last value seen, after that."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """tests/k8s/* get the ``k8s`` marker, tests/slurm/* ``slurm``, and so on."""
    tests = Path(__file__).resolve().parent
    for item in items:
        rel = Path(str(item.path)).resolve().relative_to(tests).parts
        if len(rel) > 1 and rel[0] in SYSTEM_FOLDERS:
            item.add_marker(getattr(pytest.mark, rel[0]))


@pytest.fixture
def kd_config() -> str:
    return str(CONFIGS / "digits_kd.yaml")


@pytest.fixture
def mlp_config() -> str:
    return str(CONFIGS / "digits_mlp.yaml")
