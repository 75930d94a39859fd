"""Fixtures for the container images' tests (marker ``images``): real images, built with podman.

``images``: one :class:`Images` for the session. It runs ``scripts/image-base.sh`` (podman, runc
and debootstrap installed when missing; the base image ``localhost/razor-base:bookworm``
debootstrapped once and cached), ``scripts/image-wheels.sh`` (the pinned wheels of
images/constraints.txt downloaded from PyPI once and cached), then builds

- the operator image, ``images/operator/Dockerfile``, as ``localhost/razor-operator:test``;
- the trainer image's CPU variant, ``images/trainer/Dockerfile --build-arg VARIANT=cpu``, as
  ``localhost/razor-trainer:test-cpu``,

both on the local base (no registry is reachable here: ``BASE_IMAGE`` overrides the Dockerfiles'
debian and nvidia/cuda defaults) and from the wheelhouse (``--build-context wheels=DIR``, an
offline build; so torch is PyPI's Linux wheel, the CUDA build, where a real CPU build takes the
PyTorch CPU index's). podman's layer cache makes a second session's builds take seconds; the
cold and warm times are printed at the end of the session.

Containers run as :func:`podman_run` starts them: ``--runtime runc --cgroup-manager cgroupfs``
(crun fails on this host's cgroup v1 without systemd) and ulimits no higher than this process's
own (podman's defaults are higher than an unprivileged host allows).

Every test under tests/images gets the ``images`` marker (tests/conftest.py gives it).
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE_SCRIPT = ROOT / "scripts" / "image-base.sh"
WHEELS_SCRIPT = ROOT / "scripts" / "image-wheels.sh"
OPERATOR_TAG = "localhost/razor-operator:test"
TRAINER_TAG = "localhost/razor-trainer:test-cpu"

_timings: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _timings:
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in _timings.items())
        terminalreporter.write_line(f"images: {parts}")


def _script(path: Path, timeout: float) -> str:
    """Run one of scripts/image-*.sh; its last line of stdout is the answer."""
    out = subprocess.run([str(path)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        pytest.fail(f"{path.name} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return lines[-1]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, f"podman {' '.join(args)} exited {out.returncode}:\n{out.stderr[-4000:]}"
    return out


def _ulimit(which: int, cap: int | None = None) -> str:
    soft, hard = resource.getrlimit(which)
    if cap is not None:
        soft, hard = (cap if v == resource.RLIM_INFINITY else min(v, cap) for v in (soft, hard))
    return f"{soft}:{hard}"


def run_flags() -> list[str]:
    """What every ``podman run`` here needs: runc on cgroupfs, and this process's own ulimits
    (podman's defaults are higher, and a container's limits cannot be raised without
    CAP_SYS_RESOURCE; podman caps its own nproc at the kernel's pid_max)."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    return ["--runtime", "runc", "--cgroup-manager", "cgroupfs",
            "--ulimit", f"nofile={_ulimit(resource.RLIMIT_NOFILE)}",
            "--ulimit", f"nproc={_ulimit(resource.RLIMIT_NPROC, pid_max)}"]


def podman_run(image: str, args: Sequence[str] = (), flags: Sequence[str] = (),
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``podman run --rm`` with :func:`run_flags`, no network unless ``flags`` give one; the
    container is removed even when it outlives ``timeout``."""
    name = f"razor-test-{uuid.uuid4().hex[:8]}"
    argv = ["podman", "run", "--rm", "--name", name, *run_flags(), "--network", "none",
            *flags, image, *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    finally:
        subprocess.run(["podman", "rm", "-f", "--ignore", name], capture_output=True, timeout=60)


def inspect(image: str) -> dict:
    return json.loads(podman("image", "inspect", image).stdout)[0]


@dataclass
class Images:
    base: str
    wheels: Path
    operator: str = OPERATOR_TAG
    trainer: str = TRAINER_TAG
    build_logs: dict[str, str] = field(default_factory=dict)


def build(dockerfile: str, tag: str, base: str, wheels: Path, *build_args: str,
          timeout: float = 3600) -> str:
    """``podman build`` from the repository root (the build context .dockerignore trims);
    returns the build's output. Intermediate containers are removed even on a failure."""
    argv = ["podman", "build", "--isolation", "chroot", "--force-rm", "--layers",
            "--build-context", f"wheels={wheels}", "--build-arg", f"BASE_IMAGE={base}",
            *(a for arg in build_args for a in ("--build-arg", arg)),
            "-f", dockerfile, "-t", tag, str(ROOT)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    log = out.stdout + out.stderr
    if out.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {out.returncode}:\n{log[-6000:]}")
    # The image this tag named before, and its layers that nothing else uses.
    title = tag.rsplit("/", 1)[-1].split(":")[0]
    podman("image", "prune", "-f", "--filter", f"label=org.opencontainers.image.title={title}", check=False)
    return log


@pytest.fixture(scope="session")
def images() -> Images:
    start = time.monotonic()
    base = _script(BASE_SCRIPT, timeout=1800)
    _timings["base image"] = time.monotonic() - start
    start = time.monotonic()
    wheels = Path(_script(WHEELS_SCRIPT, timeout=3600))
    _timings["wheelhouse"] = time.monotonic() - start
    result = Images(base=base, wheels=wheels)
    start = time.monotonic()
    result.build_logs["operator"] = build("images/operator/Dockerfile", OPERATOR_TAG, base, wheels)
    _timings["operator build"] = time.monotonic() - start
    start = time.monotonic()
    result.build_logs["trainer"] = build("images/trainer/Dockerfile", TRAINER_TAG, base, wheels,
                                         "VARIANT=cpu")
    _timings["trainer (cpu) build"] = time.monotonic() - start
    return result
