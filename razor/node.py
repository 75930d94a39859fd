"""One training node: ``python -m razor.node [--] <what torchrun runs>``.

Reads the launcher contract from the environment, waits (bounded) until MASTER_ADDR resolves
on non-master nodes, then runs torchrun exactly once. SIGTERM, SIGUSR2 and SIGINT are passed
to the training processes themselves, so that they save a checkpoint before they exit; the
node then exits with 75 (preempted: start again) rather than as a failure.

Standard library only: this runs before anything heavy is imported, on every backend.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

#: Exit code of a trainer (and of razor.node) that stopped on SIGTERM/SIGUSR2 after saving a
#: checkpoint: the job should be started again, not counted as failed (EX_TEMPFAIL).
EXIT_PREEMPTED = 75
EXIT_USAGE = 2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


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


def torchrun_command(settings: dict[str, str], args: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={settings['NNODES']}",
        f"--node-rank={settings['NODE_RANK']}",
        f"--nproc-per-node={settings['NPROC_PER_NODE']}",
        f"--master-addr={settings['MASTER_ADDR']}",
        f"--master-port={settings['MASTER_PORT']}",
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


#: torchrun's report of the first worker that failed ("Root Cause (first observed failure)"):
#: its ``exitcode`` line, negative for a signal.
_ROOT_CAUSE = re.compile(r"Root Cause")
_EXITCODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


def _pump_stderr(stream, found: dict[str, int]) -> None:
    """Copy torchrun's stderr to ours as it comes, noting the root cause's exit code: torchrun
    itself exits 1 whatever its worker's code was (a bad config's 2, an OOM kill's -9)."""
    out = getattr(sys.stderr, "buffer", None)
    in_root = False
    for raw in iter(stream.readline, b""):
        if out is not None:
            out.write(raw)
            out.flush()
        else:  # a text-only stderr (tests)
            sys.stderr.write(raw.decode(errors="replace"))
        line = raw.decode(errors="replace")
        in_root = in_root or bool(_ROOT_CAUSE.search(line))
        m = _EXITCODE.match(line)
        if m and in_root and "code" not in found:
            found["code"] = int(m.group(1))
    stream.close()


def exit_code(torchrun_code: int, worker_code: int | None) -> int:
    """The node's exit code: the failed worker's own (a signal N as 128 + N, as a shell and a
    container runtime say it) when torchrun reported one, else torchrun's."""
    code = torchrun_code
    if code != 0 and worker_code not in (None, 0):
        code = worker_code
    return code if code >= 0 else 128 - code


def run(args: list[str], environ: dict[str, str] | None = None) -> int:
    environ = dict(os.environ if environ is None else environ)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        log("usage: python -m razor.node [--] (-m MODULE | SCRIPT) [ARGS...]")
        return EXIT_USAGE
    settings = contract(environ)
    if settings["NODE_RANK"] == "0":
        # The master node's torchrun listens on MASTER_PORT: say so now if it cannot.
        if not port_free(int(settings["MASTER_PORT"])):
            raise SystemExit(
                f"razor-node: MASTER_PORT {settings['MASTER_PORT']} is already in use on this machine "
                "(another job?); give each job its own port (PORT=... or port: auto)"
            )
    else:
        timeout = float(environ.get("RAZOR_MASTER_ADDR_TIMEOUT", "300"))
        wait_for_master(settings["MASTER_ADDR"], timeout)
    # The contract's forms for torchrun and for the trainer, whichever the caller set.
    for name, value in settings.items():
        environ[name] = value
        environ[f"PET_{name}"] = value
    proc = subprocess.Popen(torchrun_command(settings, args), env=environ, start_new_session=True,
                            stderr=subprocess.PIPE)
    root_cause: dict[str, int] = {}
    pump = threading.Thread(target=_pump_stderr, args=(proc.stderr, root_cause), daemon=True)
    pump.start()
    stopping: dict[str, float] = {}

    def forward(signum: int, _frame: object) -> None:
        workers = _children(proc.pid)
        if not stopping:
            stopping["since"] = time.monotonic()
            log(f"got {signal.Signals(signum).name}: asking {len(workers)} training process(es) "
                "to save a checkpoint and stop")
        for pid in workers or [proc.pid]:
            try:
                os.kill(pid, signum if signum != signal.SIGINT else signal.SIGTERM)
            except ProcessLookupError:
                pass

    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    grace = float(environ.get("RAZOR_STOP_GRACE", "120"))
    while True:
        try:
            code = proc.wait(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            if stopping and time.monotonic() - stopping["since"] > grace:
                log(f"training processes still running {grace:g}s after the stop signal; killing them")
                kill_tree(proc.pid)
    pump.join(10)
    if stopping and code != 0:
        return EXIT_PREEMPTED
    return exit_code(code, root_cause.get("code"))


def main(argv: list[str] | None = None) -> int:
    return run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
