"""Backends: each turns a validated RazorJob into running nodes that keep the launcher contract.

One interface, :class:`Backend`, implemented by ``local`` (processes on this machine),
``kubernetes`` (the RazorJob object; razor-operator does the rest) and ``slurm`` (an sbatch
script). razorctl calls nothing else: each of its commands is one method, the same for every
backend, so a new backend is one module here and one entry in :data:`BACKENDS`.

A backend module is imported only when it is used (the kubernetes client, for one, is heavy).
"""

from __future__ import annotations

import importlib
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ..spec import RazorJob

#: Every backend: its name, and the module and class that implement it.
BACKENDS = {
    "local": ("razor.backends.local", "LocalBackend"),
    "kubernetes": ("razor.backends.kubernetes", "KubernetesBackend"),
    "slurm": ("razor.backends.slurm", "SlurmBackend"),
}


class Refused(RuntimeError):
    """The job cannot start here as it is (e.g. its port is in use on this machine): razorctl
    says why and exits 2, as for a bad spec; nothing was started."""


class Backend(ABC):
    """Where a RazorJob runs. ``ref`` names a job that was submitted: its name, or on SLURM its
    job id or name. What a command prints goes to ``out`` (notes and warnings to ``err``); each
    returns razorctl's exit code, except ``render``, which returns the text to print."""

    #: razorctl's name for it (``--local``, ``--slurm``; Kubernetes is the default).
    name: ClassVar[str]

    def __init__(self, cwd: Path | None = None, out: IO[str] | None = None, err: IO[str] | None = None,
                 **_other_backends_options: object):
        self.cwd = cwd or Path.cwd()
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def say(self, text: str) -> None:
        print(text, file=self.out)

    def note(self, text: str) -> None:
        print(f"razorctl: note: {text}", file=self.err)

    @abstractmethod
    def render(self, job: RazorJob, source: str, fmt: str = "text") -> str:
        """Exactly what ``submit`` would create or run (a dry run: nothing starts); ``fmt``: text,
        json or yaml, where the backend has them."""

    @abstractmethod
    def submit(self, job: RazorJob, source: str) -> int:
        """Start the job (``source``: where it was read from, for messages)."""

    @abstractmethod
    def status(self, ref: str, fmt: str = "text") -> int:
        """Print a job's phase (and what else the backend knows of it)."""

    @abstractmethod
    def list(self, all_namespaces: bool = False, fmt: str = "text") -> int:
        """Print the backend's jobs."""

    @abstractmethod
    def logs(self, ref: str, rank: int | None, follow: bool) -> int:
        """Print a rank's output (None: the backend's default), and with ``follow`` keep printing
        until the job ends."""

    @abstractmethod
    def cancel(self, ref: str) -> int:
        """Stop a job and remove what it runs."""

    @abstractmethod
    def wait(self, ref: str, timeout: float) -> int:
        """Wait until a job finishes; 0 when it succeeded, 1 otherwise."""


def get(name: str, **options) -> Backend:
    """The backend ``name`` (one of BACKENDS), made with ``options`` (``cwd``, ``out``, ``err``,
    and the backend's own: ``namespace``, ``kubeconfig``, ``context``, ``defaults_from``)."""
    try:
        module, cls = BACKENDS[name]
    except KeyError:
        raise ValueError(f"no backend {name!r} (there are: {', '.join(BACKENDS)})") from None
    return getattr(importlib.import_module(module), cls)(**options)
