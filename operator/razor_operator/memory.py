"""Give memory back after a burst: a burst of reconciles (1,000 jobs created at once) leaves the
heap large after the work is done; once the operator has been idle a moment, collect garbage
and ask glibc to return free heap pages to the system (malloc_trim)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
import time


class Trimmer:
    def __init__(self, idle_seconds: float = 2.0):
        self.idle_seconds = idle_seconds
        self._last_work = 0.0
        self._last_trim = 0.0
        self._lock = threading.Lock()
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        self._trim = getattr(libc, "malloc_trim", None)

    def touch(self) -> None:
        with self._lock:
            self._last_work = time.monotonic()

    def trim_if_idle(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._last_work <= self._last_trim or now - self._last_work < self.idle_seconds:
                return False
            self._last_trim = now
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        return True

    def start(self, interval: float = 1.0) -> None:
        def loop() -> None:
            while True:
                time.sleep(interval)
                self.trim_if_idle()

        threading.Thread(target=loop, name="razor-trim", daemon=True).start()
