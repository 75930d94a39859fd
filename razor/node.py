"""One training node: ``python -m razor.node [--] <what torchrun runs>``.

Reads the launcher contract from the environment, waits (bounded) until MASTER_ADDR resolves
on non-master nodes, then runs torchrun exactly once. SIGTERM, SIGUSR2 and SIGINT are passed
to the training processes themselves, so that they save a checkpoint before they exit; the
node then exits with 75 (preempted: start again) rather than as a failure.

What the node adds to torchrun, so that a user sees how far the job is and why it ended:

- **Progress.** The training processes get ``RAZOR_PROGRESS_DIR`` (a folder of this node's own)
  for :func:`razor.progress.report`. A watcher thread reads their reports; node 0 writes global
  rank 0's as the job's progress to ``<RAZOR_WORK_DIR>/razor-status/progress.json`` and, on
  Kubernetes, POSTs it to the operator (``RAZOR_PROGRESS_URL``).
- **Stalls.** With ``RAZOR_PROGRESS_TIMEOUT``, once a rank has reported, a node whose ranks all
  stop reporting for that long is stalled (a hang in a collective, a dead data loader): the
  training processes are stopped as on a stop signal and the node exits with
  :data:`EXIT_STALLED` (124), which the failure policy retries.
- **Why it ended.** torchrun writes each worker's exception to an error file in the log dir it
  gets here (``TORCHELASTIC_ERROR_FILE``, when the entry point is decorated with ``@record``).
  The failure's message ("rank 1 exited with code 1: ValueError: ..." and the traceback's last
  lines, or the stall) goes to ``<work dir>/razor-status/node-<NODE_RANK>.json`` and to
  ``$RAZOR_TERMINATION_LOG`` (a pod's termination message), where every backend reads it.
- **Plain output.** torchrun's own stderr is held back until its workers start, so that a
  rendezvous port taken after this node's check is one line rather than torch's traceback; and
  the leak report of triton's nanobind bindings, printed by every training process as it exits,
  is dropped (see :class:`TorchrunStderr`).

Standard library only: this runs before anything heavy is imported, on every backend.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from . import progress as _progress

#: Exit code of a trainer (and of razor.node) that stopped on SIGTERM/SIGUSR2 after saving a
#: checkpoint: the job should be started again, not counted as failed (EX_TEMPFAIL).
EXIT_PREEMPTED = 75
EXIT_USAGE = 2
#: Exit code of a node whose training processes stopped reporting progress for
#: RAZOR_PROGRESS_TIMEOUT seconds (timeout(1)'s code): the failure policy restarts the gang,
#: not counted against backoffLimit.
EXIT_STALLED = 124
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)
#: A pod's termination message holds 4096 bytes; the node's message stays below.
MESSAGE_LIMIT = 4000
#: How many lines of a failed rank's traceback the message carries.
TRACEBACK_LINES = 8
#: Where docs/trainer.md says how a script's traceback reaches razor.
TRACEBACK_DOC = "docs/trainer.md#tracebacks"


def log(message: str) -> None:
    print(f"razor-node: {message}", file=sys.stderr, flush=True)


def contract(environ: dict[str, str]) -> dict[str, str]:
    """The node's settings from the contract's variables (torchrun's PET_* forms as fallback)."""
    out: dict[str, str] = {}
    missing = []
    for name in ("NNODES", "NODE_RANK", "NPROC_PER_NODE", "MASTER_ADDR", "MASTER_PORT"):
        value = environ.get(name) or environ.get(f"PET_{name}")
        if name == "NODE_RANK" and not value:
            value = environ.get("SLURM_NODEID")
        if not value:
            missing.append(name)
        else:
            out[name] = value
    if missing:
        raise SystemExit(f"razor-node: the launcher contract is incomplete: {', '.join(missing)} not set")
    for name in ("NNODES", "NODE_RANK", "NPROC_PER_NODE", "MASTER_PORT"):
        if not out[name].isdigit():
            raise SystemExit(f"razor-node: {name}={out[name]!r} is not a whole number")
    if int(out["NODE_RANK"]) >= int(out["NNODES"]):
        raise SystemExit(f"razor-node: NODE_RANK {out['NODE_RANK']} is not below NNODES {out['NNODES']}")
    return out


def wait_for_master(addr: str, timeout: float, interval: float = 1.0) -> None:
    """Wait until ``addr`` resolves (a master pod's DNS record appears late); bounded."""
    start = time.monotonic()
    next_note = start
    while True:
        try:
            socket.getaddrinfo(addr, None)
            return
        except socket.gaierror as exc:
            waited = time.monotonic() - start
            if waited >= timeout:
                raise SystemExit(
                    f"razor-node: MASTER_ADDR {addr!r} did not resolve within {timeout:g}s "
                    f"({exc.strerror}); is the master node running and its DNS name right?"
                )
            if time.monotonic() >= next_note:
                log(f"waiting for MASTER_ADDR {addr} to resolve ({waited:.0f}s of {timeout:g}s)")
                next_note += 10
            time.sleep(interval)


def port_free(port: int) -> bool:
    """Whether torch's rendezvous store could listen on ``port`` (all interfaces, v4 and v6)."""
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((addr, port))
        except OSError:
            return False
        finally:
            sock.close()
    return True


def port_in_use(port: int | str) -> str:
    """The one line for a rendezvous port that is taken, before torchrun starts or under it."""
    return (f"MASTER_PORT {port} is already in use on this machine (another job?); "
            "give each job its own port (PORT=... or port: auto)")


def torchrun_command(settings: dict[str, str], args: list[str], log_dir: str | None = None) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={settings['NNODES']}",
        f"--node-rank={settings['NODE_RANK']}",
        f"--nproc-per-node={settings['NPROC_PER_NODE']}",
        f"--master-addr={settings['MASTER_ADDR']}",
        f"--master-port={settings['MASTER_PORT']}",
        *([f"--log-dir={log_dir}"] if log_dir else []),
        *args,
    ]


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids += [int(p) for p in fh.read().split()]
    except OSError:
        pass
    return kids


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop(0))
        out += kids
        todo += kids
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, everything below it and their process groups. torchrun starts each worker
    in a session of its own, so killing torchrun's process group alone would leave the training
    processes running; the tree is read first, since a killed parent's children move to init."""
    tree = [pid, *descendants(pid)]
    for target in tree:
        for kill in (os.killpg, os.kill):  # the group where target leads one, then the process
            try:
                kill(target, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# ----------------------------------------------------------------------------- torchrun's stderr


#: torchrun's report of the first worker that failed ("Root Cause (first observed failure)"):
#: its rank, its ``exitcode`` (negative for a signal) and its error file.
_ROOT_CAUSE = re.compile(r"Root Cause")
_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)")
_EXITCODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")
_ERROR_FILE = re.compile(r"^\s*error_file\s*:\s*(\S.*?)\s*$")
#: torchrun's rendezvous store could not listen (the port was taken after port_free's check).
_ADDR_IN_USE = re.compile(r"EADDRINUSE|address already in use", re.IGNORECASE)
#: The report nanobind prints at interpreter exit for triton's bindings (libtriton), in every
#: training process: torch's optimizers import torch._dynamo, which imports triton whenever it
#: is installed, and libtriton offers no way to turn nanobind's leak check off (triton silences
#: it only in its own compile workers). Each line of it, and only those: a header, its items,
#: and its last line, which nanobind ends without a newline (the next process's output follows
#: on the same line).
_LEAK_HEAD = re.compile(rb"^nanobind: (leaked \d+ [a-z_ ]+!|this is likely caused by a reference counting issue "
                        rb"in the binding code\.)\r?\n?$")
_LEAK_ITEM = re.compile(rb"^ - (leaked (instance|type|function|keep_alive) .*|\.\.\. skipped remainder)\r?\n?$")
_LEAK_SEE = b"See https://nanobind.readthedocs.io/en/latest/refleaks.html"
#: torchrun's log line when its exit barrier fails, followed by a traceback. On a node other than
#: the master it is a race in torch, not a failure: the last agent to reach the barrier sets the
#: key the others wait for, the master's agent (which hosts the store) sees it and exits, and an
#: agent still reading the key loses its connection. torchrun then exits 0.
_EXIT_BARRIER = re.compile(r"Error waiting on exit barrier")


class TorchrunStderr(threading.Thread):
    """Copies torchrun's stderr, and its workers' (they inherit it), to ours, line by line.

    - Until :meth:`release` (the workers have started), lines are held back: if torchrun then
      fails to bind the rendezvous port, razor.node says so in one line instead.
    - nanobind's leak report for triton's bindings is dropped (see ``_LEAK_HEAD``).
    - torchrun's root cause report is read (``root``: rank, local_rank, code, error_file):
      torchrun exits 1 whatever its worker's code was (a bad config's 2, an OOM kill's -9).
    - The last lines are kept (``tail``) for a failure that has no root cause (a rendezvous
      that timed out).
    - From a failed exit barrier on (``_EXIT_BARRIER``), lines are held back until torchrun's
      code is known (:meth:`settle`): after a success they are a torch race, and dropped.
    """

    def __init__(self, stream) -> None:
        super().__init__(name="torchrun-stderr", daemon=True)
        self.stream = stream
        self.root: dict[str, object] = {}
        self.tail: collections.deque[str] = collections.deque(maxlen=TRACEBACK_LINES)
        self._lock = threading.Lock()
        self._held: list[bytes] | None = []
        self._in_root = False
        self._in_leak = False
        self._barrier: list[bytes] | None = None

    @property
    def released(self) -> bool:
        return self._held is None

    def held_text(self) -> str:
        with self._lock:
            return b"".join(self._held or []).decode(errors="replace")

    def release(self) -> None:
        """Write what was held back, and from now on every line as it comes."""
        with self._lock:
            held, self._held = self._held, None
            for raw in held or []:
                _write_stderr(raw)

    def discard(self) -> None:
        with self._lock:
            self._held = []

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            kept = self.without_leaks(raw)
            if not kept:
                continue
            line = kept.decode(errors="replace")
            self._note(line)
            with self._lock:
                if self._barrier is None and _EXIT_BARRIER.search(line):
                    self._barrier = []
                if self._barrier is not None:
                    self._barrier.append(kept)
                elif self._held is None:
                    _write_stderr(kept)
                else:
                    self._held.append(kept)
        self.stream.close()

    def settle(self, succeeded: bool) -> None:
        """torchrun has exited: a failed exit barrier's report is shown after a failure, and after
        a success replaced by one line (every worker of this node finished; nothing was lost)."""
        with self._lock:
            barrier, self._barrier = self._barrier, None
        if barrier and succeeded:
            log("torchrun's exit barrier lost the master's store as the master finished (a race in "
                "torch, after every worker here had succeeded); its traceback is left out")
        elif barrier:
            for raw in barrier:
                _write_stderr(raw)

    def without_leaks(self, raw: bytes) -> bytes:
        """``raw`` less nanobind's leak report (b"" when the line is all of it)."""
        while raw.startswith(_LEAK_SEE):
            raw = raw[len(_LEAK_SEE):].lstrip(b" ")
        if not raw:
            return b""
        if _LEAK_HEAD.match(raw):
            self._in_leak = True
            return b""
        if self._in_leak and _LEAK_ITEM.match(raw):
            return b""
        return raw

    def _note(self, line: str) -> None:
        if line.strip():
            self.tail.append(line.rstrip())
        self._in_root = self._in_root or bool(_ROOT_CAUSE.search(line))
        if not self._in_root:
            return
        for key, pattern in (("rank", _RANK), ("code", _EXITCODE), ("error_file", _ERROR_FILE)):
            m = pattern.match(line)
            if m and key not in self.root:
                if key == "rank":
                    self.root["rank"], self.root["local_rank"] = int(m.group(1)), int(m.group(2))
                else:
                    self.root[key] = int(m.group(1)) if key == "code" else m.group(1)


def _write_stderr(raw: bytes) -> None:
    out = getattr(sys.stderr, "buffer", None)
    if out is not None:
        out.write(raw)
        out.flush()
    else:  # a text-only stderr (tests)
        sys.stderr.write(raw.decode(errors="replace"))
        sys.stderr.flush()


def exit_code(torchrun_code: int, worker_code: int | None) -> int:
    """The node's exit code: the failed worker's own (a signal N as 128 + N, as a shell and a
    container runtime say it) when torchrun reported one, else torchrun's."""
    code = torchrun_code
    if code != 0 and worker_code not in (None, 0):
        code = worker_code
    return code if code >= 0 else 128 - code


# ----------------------------------------------------------------------------- the failure's message


def read_error_file(path: str) -> tuple[str, list[str]] | None:
    """A worker's torchelastic error file: (the exception line, the traceback's lines), as
    ``@record`` writes it: ``{"message": {"message": "ValueError: ...", "extraInfo":
    {"py_callstack": "Traceback ...", "timestamp": "..."}}}``. None when there is none."""
    doc = _progress.read_json(path)
    if not isinstance(doc, dict) or "message" not in doc:
        return None
    message = doc["message"]
    if isinstance(message, str):
        return message.strip(), []
    if not isinstance(message, dict):
        return None
    callstack = str((message.get("extraInfo") or {}).get("py_callstack") or "")
    return str(message.get("message") or "").strip(), callstack.rstrip().splitlines()


def _error_file(root: dict[str, object], log_dir: str) -> str | None:
    """The root cause's error file: as torchrun named it, else found in its log dir
    (``<log_dir>/<run id>/attempt_<n>/<local rank>/error.json``)."""
    named = root.get("error_file")
    if isinstance(named, str) and os.path.isfile(named):
        return named
    if "local_rank" in root:
        found = sorted(glob.glob(os.path.join(log_dir, "*", "attempt_*", str(root["local_rank"]), "error.json")))
        return found[-1] if found else None
    return None


def failure_message(root: dict[str, object], code: int, log_dir: str, tail: list[str]) -> str:
    """What ended a failed node, for the user: ``rank 1 exited with code 1: ValueError: ...``
    and the last lines of its traceback; the exit code and where to read about tracebacks when
    the rank recorded none; torchrun's last lines when no rank failed (a rendezvous that timed
    out)."""
    if "rank" not in root:
        return "\n".join([f"torchrun exited with code {code}", *tail])
    worker = root.get("code")
    head = f"rank {root['rank']} exited with code {code}"
    if isinstance(worker, int) and worker < 0:
        try:
            head += f" ({signal.Signals(-worker).name})"
        except ValueError:
            pass
    path = _error_file(root, log_dir)
    found = read_error_file(path) if path else None
    if not found or not found[0]:
        if isinstance(worker, int) and worker < 0:
            return head
        return f"{head} (no traceback recorded: see {TRACEBACK_DOC})"
    exception, lines = found
    if lines and lines[-1].strip() == exception.splitlines()[-1].strip():
        lines = lines[:-len(exception.splitlines())]  # the exception ends the traceback: said once
    return "\n".join([f"{head}: {exception}", *_users_frames(lines)[-TRACEBACK_LINES:]])


#: The frame of torchelastic's ``@record`` wrapper, in every recorded traceback.
_RECORD_FRAME = "/torch/distributed/elastic/multiprocessing/errors/"


def _users_frames(lines: list[str]) -> list[str]:
    """A traceback's lines without the frame of the ``@record`` wrapper (its ``File`` line and
    the source lines under it): the lines the message has room for are the user's."""
    out: list[str] = []
    skipping = False
    for line in lines:
        if line.startswith("  File "):
            skipping = _RECORD_FRAME in line
        elif not line.startswith("    "):
            skipping = False
        if not skipping:
            out.append(line)
    return out


def fit(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """``message`` within ``limit`` bytes: its first line, then as many of its last lines as fit
    (a traceback's end says most)."""
    if len(message.encode()) <= limit:
        return message
    first, *rest = message.splitlines()
    first = first.encode()[:limit // 2].decode(errors="ignore")
    kept: list[str] = []
    size = len(first.encode()) + len("\n...") + 1
    for line in reversed(rest):
        size += len(line.encode()) + 1
        if size > limit:
            break
        kept.insert(0, line)
    return "\n".join([first, "...", *kept])


# ----------------------------------------------------------------------------- progress


class Publisher:
    """Node 0's side of the job's progress: global rank 0's latest report to
    ``<work_dir>/razor-status/progress.json``, and to the operator (``url``) at most every
    ``interval`` seconds and once at the end. Neither may end the training: a failure is logged
    once."""

    def __init__(self, work_dir: str | None, url: str | None, token_file: str | None,
                 interval: float, ca_file: str | None = None) -> None:
        self.work_dir, self.url, self.token_file, self.interval = work_dir, url, token_file, interval
        self.ca_file = ca_file
        self.latest: _progress.Progress | None = None
        self._posted: _progress.Progress | None = None
        self._last_post = float("-inf")
        self._warned: set[str] = set()

    def _warn(self, what: str, exc: BaseException) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log(f"cannot {what} ({exc}); training goes on")

    def update(self, p: _progress.Progress) -> None:
        self.latest = p
        if self.work_dir:
            try:
                _progress.write_progress(self.work_dir, p)
            except (OSError, ValueError) as exc:
                self._warn(f"write the progress to {_progress.status_dir(self.work_dir)}", exc)
        if time.monotonic() - self._last_post >= self.interval:
            self.post()

    def post(self) -> None:
        if not self.url or self.latest is None or self.latest is self._posted:
            return
        self._last_post = time.monotonic()
        self._posted = self.latest
        headers = {"Content-Type": "application/json"}
        try:
            if self.token_file:
                with open(self.token_file) as fh:  # read each time: a projected token is renewed
                    headers["Authorization"] = f"Bearer {fh.read().strip()}"
            body = json.dumps({"progress": self.latest.to_status()}).encode()
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                response.read()
        except (OSError, ValueError, urllib.error.URLError) as exc:
            self._warn(f"send the progress to {self.url}", exc)


class Watcher(threading.Thread):
    """Reads this node's ranks' reports every ``interval`` seconds: hands global rank 0's to the
    ``publisher`` (node 0), and sets ``stalled`` when ``timeout`` seconds pass without a new
    report from any rank, counted from the last one (the first report arms it: a script that
    never reports is never stalled; a report of stage "done" disarms it)."""

    def __init__(self, folder: str, timeout: float | None, publisher: Publisher | None,
                 interval: float = 1.0) -> None:
        super().__init__(name="progress-watcher", daemon=True)
        self.folder, self.timeout, self.publisher = folder, timeout, publisher
        self.interval = min(interval, timeout / 4) if timeout else interval
        self.stalled = threading.Event()
        self.last: _progress.Progress | None = None
        self.message: str | None = None
        self._newest = 0.0
        self._seen_at: float | None = None
        self._rank0_at = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        reports = _progress.read_reports(self.folder)
        if reports:
            newest = max(reports.values(), key=lambda p: p.updated)
            if newest.updated > self._newest:
                self._newest, self._seen_at, self.last = newest.updated, time.monotonic(), newest
        rank0 = reports.get(0)
        if self.publisher is not None and rank0 is not None and rank0.updated > self._rank0_at:
            self._rank0_at = rank0.updated
            self.publisher.update(rank0)
        done = self.last is not None and self.last.stage == "done"  # only the exit is left
        if (self.timeout and self._seen_at is not None and not done and not self.stalled.is_set()
                and time.monotonic() - self._seen_at >= self.timeout):
            where = self.last.where() if self.last else "the last report"
            self.message = f"no progress for {self.timeout:g} s since {where}"
            self.stalled.set()

    def finish(self) -> None:
        """Stop watching; read the reports a last time and send the job's progress once more."""
        self._done.set()
        if self.is_alive():
            self.join(10)
        self.poll()
        if self.publisher is not None:
            self.publisher.post()


# ----------------------------------------------------------------------------- the node


class Refused(Exception):
    """The node cannot run as it is set up: ``code`` and the one line that says why."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _seconds(environ: dict[str, str], name: str) -> float | None:
    value = (environ.get(name) or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise Refused(EXIT_USAGE, f"{name}={value!r} is not a number of seconds") from None
    return seconds if seconds > 0 else None


def record_end(environ: dict[str, str], node_rank: int, code: int, message: str | None) -> None:
    """How this node ended, where backends read it: ``<work dir>/razor-status/node-<rank>.json``
    (with RAZOR_WORK_DIR) and the failure's message in ``$RAZOR_TERMINATION_LOG``. Never fatal."""
    message = fit(message) if message else None
    work_dir = environ.get("RAZOR_WORK_DIR")
    attempt = environ.get("RAZOR_ATTEMPT", "1")
    if work_dir:
        try:
            _progress.write_node_end(work_dir, node_rank, int(attempt) if attempt.isdigit() else 1, code, message)
        except OSError as exc:
            log(f"cannot write {_progress.node_end_file(work_dir, node_rank)}: {exc}")
    termination_log = environ.get("RAZOR_TERMINATION_LOG")
    if termination_log and message:
        try:
            with open(termination_log, "w") as fh:
                fh.write(message + "\n")
        except OSError as exc:
            log(f"cannot write {termination_log}: {exc}")


def run(args: list[str], environ: dict[str, str] | None = None) -> int:
    environ = dict(os.environ if environ is None else environ)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        log("usage: python -m razor.node [--] (-m MODULE | SCRIPT) [ARGS...]")
        return EXIT_USAGE
    settings = contract(environ)
    node_rank = int(settings["NODE_RANK"])
    scratch = tempfile.mkdtemp(prefix="razor-node-")
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        code, message = _run(args, environ, settings, scratch)
    except Refused as exc:  # a port in use, a bad setting
        code, message = exc.code, exc.message
        log(message)
    except SystemExit as exc:  # a master that never resolved
        if not isinstance(exc.code, str):
            raise
        code, message = 1, exc.code.removeprefix("razor-node: ")
        log(message)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        shutil.rmtree(scratch, ignore_errors=True)
    record_end(environ, node_rank, code, message)
    return code


def _run(args: list[str], environ: dict[str, str], settings: dict[str, str],
         scratch: str) -> tuple[int, str | None]:
    """Run torchrun once; the node's exit code and the message of its failure (None: none)."""
    master = settings["NODE_RANK"] == "0"
    if master:
        # The master node's torchrun listens on MASTER_PORT: say so now if it cannot.
        if not port_free(int(settings["MASTER_PORT"])):
            raise Refused(EXIT_USAGE, port_in_use(settings["MASTER_PORT"]))
    else:
        timeout = float(environ.get("RAZOR_MASTER_ADDR_TIMEOUT", "300"))
        wait_for_master(settings["MASTER_ADDR"], timeout)
    stall_timeout = _seconds(environ, "RAZOR_PROGRESS_TIMEOUT")
    post_interval = _seconds(environ, "RAZOR_PROGRESS_INTERVAL") or 10.0
    # The contract's forms for torchrun and for the trainer, whichever the caller set.
    for name, value in settings.items():
        environ[name] = value
        environ[f"PET_{name}"] = value
    # Between machines, gloo and NCCL talk over the interface of the route to the master.
    from .netif import socket_ifname_env

    interface = socket_ifname_env(environ)
    environ.update(interface.env)
    if interface.message:
        log(interface.message)
    reports, log_dir = os.path.join(scratch, "progress"), os.path.join(scratch, "torchrun")
    os.mkdir(reports)
    environ[_progress.PROGRESS_DIR_ENV] = reports
    publisher = None
    if master:
        publisher = Publisher(environ.get("RAZOR_WORK_DIR"), environ.get("RAZOR_PROGRESS_URL"),
                              environ.get("RAZOR_PROGRESS_TOKEN_FILE"), post_interval,
                              environ.get("RAZOR_PROGRESS_CA_FILE"))
    proc = subprocess.Popen(torchrun_command(settings, args, log_dir), env=environ, start_new_session=True,
                            stderr=subprocess.PIPE)
    stderr = TorchrunStderr(proc.stderr)
    stderr.start()
    watcher = Watcher(reports, stall_timeout, publisher)
    watcher.start()
    stopping: dict[str, float] = {}

    def stop(signum: int) -> None:
        """Ask the training processes to save a checkpoint and stop (torchrun, before it has any)."""
        workers = _children(proc.pid)
        if not stopping:
            stopping["since"], stopping["signal"] = time.monotonic(), signum
            if not watcher.stalled.is_set():
                log(f"got {signal.Signals(signum).name}: asking {len(workers)} training process(es) "
                    "to save a checkpoint and stop")
        for pid in workers or [proc.pid]:
            try:
                os.kill(pid, signum if signum != signal.SIGINT else signal.SIGTERM)
            except ProcessLookupError:
                pass

    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: stop(signum))
    grace = float(environ.get("RAZOR_STOP_GRACE", "120"))
    while True:
        try:
            code = proc.wait(timeout=1.0 if stderr.released else 0.1)
            break
        except subprocess.TimeoutExpired:
            if not stderr.released and _children(proc.pid):
                stderr.release()  # the workers have started: the rendezvous port was bound
            if watcher.stalled.is_set() and not stopping:
                log(f"{watcher.message}; stopping the training processes")
                stop(signal.SIGTERM)
            if stopping and time.monotonic() - stopping["since"] > grace:
                log(f"training processes still running {grace:g}s after the stop signal; killing them")
                kill_tree(proc.pid)
                stopping["since"], stopping["killed"] = float("inf"), 1
    stderr.join(10)
    stderr.settle(code == 0)
    watcher.finish()
    if not stderr.released and code != 0 and master and _ADDR_IN_USE.search(stderr.held_text()):
        # Taken between port_free's check and torchrun's bind: torch's 30-line traceback says less.
        stderr.discard()
        raise Refused(EXIT_USAGE, port_in_use(settings["MASTER_PORT"]))
    stderr.release()
    if watcher.stalled.is_set():
        log(f"{watcher.message}: the training processes were stopped (exit code {EXIT_STALLED})")
        return EXIT_STALLED, watcher.message
    if stopping and code != 0:
        how = f"; killed {grace:g}s after it" if "killed" in stopping else ""
        return EXIT_PREEMPTED, f"stopped on {signal.Signals(int(stopping['signal'])).name}{how}"
    code = exit_code(code, stderr.root.get("code"))  # type: ignore[arg-type]
    if code == 0:
        return 0, None
    message = failure_message(stderr.root, code, log_dir, list(stderr.tail))
    log(message.splitlines()[0])
    return code, message


def main(argv: list[str] | None = None) -> int:
    return run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
