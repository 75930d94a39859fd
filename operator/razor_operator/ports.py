"""Ports for hostNetwork jobs: pods on the host's network share its ports, so no two live
hostNetwork jobs may use the same one. The index is rebuilt from the jobs' status at start-up."""

from __future__ import annotations

import threading


class PortIndex:
    def __init__(self, first: int = 29500, last: int = 32767):
        if not 1024 <= first <= last <= 65535:
            raise ValueError(f"port range {first}-{last} is not within 1024-65535")
        self.first, self.last = first, last
        self._by_job: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def allocate(self, namespace: str, name: str, recorded: int | None = None) -> int:
        """The job's port: the one it has, the one its status records, else the lowest free one."""
        key = (namespace, name)
        with self._lock:
            if key in self._by_job:
                return self._by_job[key]
            used = set(self._by_job.values())
            if recorded is not None and recorded not in used:
                self._by_job[key] = recorded
                return recorded
            for port in range(self.first, self.last + 1):
                if port not in used:
                    self._by_job[key] = port
                    return port
        raise RuntimeError(f"no free hostNetwork port left in {self.first}-{self.last}")

    def release(self, namespace: str, name: str) -> None:
        with self._lock:
            self._by_job.pop((namespace, name), None)

    def in_use(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._by_job)
