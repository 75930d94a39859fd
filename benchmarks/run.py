"""Run every benchmark, print the results as markdown, and with --write rewrite docs/benchmarks.md.

    .venv/bin/python benchmarks/run.py [--quick] [--write] [--skip-k8s] [--skip-slurm] [--skip-node]
                                                                            (make bench: --write)

--quick takes fewer repetitions (a smoke test; the medians are then rough). --skip-k8s leaves out
the operator benchmark (k8s_fanout.py), which starts a Kubernetes control plane on loopback;
--skip-slurm the SLURM one (slurm_submit.py); --skip-node the one on a real one-node Kubernetes
(k8s_node.py: kubectl apply of a RazorJob against hand-written pods, and the gang's recovery),
which needs the node cluster of tests/kube_node.py to itself.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import sys
from dataclasses import dataclass

import k8s_fanout
import k8s_node
import slurm_submit
import launch_overhead
import throughput
from common import ROOT, median, outcome, verdict

DOC = ROOT / "docs" / "benchmarks.md"
COMMAND = ".venv/bin/python benchmarks/run.py --write"


@dataclass(frozen=True)
class Settings:
    launch_repeat: int
    launch_warmup: int
    throughput_repeat: int
    k8s_repeat: int = 3        # runs of the one-big-job fan-out
    k8s_many_repeat: int = 1   # runs of the many-jobs case
    node_repeat: int = 5       # pairs of k8s_node's kubectl apply → first step
    node_recovery_repeat: int = 3  # k8s_node's gang recoveries


FULL = Settings(launch_repeat=5, launch_warmup=1, throughput_repeat=3, k8s_repeat=3)
QUICK = Settings(launch_repeat=2, launch_warmup=1, throughput_repeat=2, k8s_repeat=2, node_repeat=2,
                 node_recovery_repeat=1)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def machine(load_before: str, load_after: str) -> str:
    return "\n".join([
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs (`nproc`), no GPU used",
        f"- Python {platform.python_version()}, torch {importlib.metadata.version('torch')}, "
        f"{platform.system()} {platform.release()}",
        f"- load average (1, 5, 15 min) before the run: {load_before}; after: {load_after} "
        "(the benchmark's own processes count too; more than about 2 means other work "
        "shared the cores)",
    ]) + "\n"


def launch_notes(r: launch_overhead.Result) -> str:
    ours = median([s.first_step for s in r.razorctl])
    bare = median([s.first_step for s in r.bare])
    extra_total = median([s.total for s in r.razorctl]) - median([s.total for s in r.bare])
    worst = max(r.ratio("first_step"), r.ratio("total"))
    opening = ("Both ratios are within the target." if worst <= launch_overhead.TARGET
               else "**The target is missed.**")
    return (
        f"{opening} razorctl adds {ours - bare:.2f} s before the first optimizer step and "
        f"{extra_total:.2f} s to the whole run. Its fixed cost is one Python start-up of razorctl "
        f"(importing razor and pydantic, validating the RazorJob, loading the config and checking "
        f"cfgOptions: `razorctl render --local` alone takes {median(r.render):.2f} s) and one more of "
        f"`python -m razor.node` before torchrun; the rest of the path (torchrun, the trainer) is the "
        f"same on both sides. The bare run itself needs {bare:.2f} s to reach its first step, mostly "
        f"Python start-up: torchrun imports torch, then each worker imports torch, scikit-learn and "
        f"the trainer, on {os.cpu_count()} shared cores. The ratio is a fixed cost over that "
        f"start-up, so on a machine that imports torch faster the same overhead is a larger ratio.\n"
    )


def rel_spread(values: list[float]) -> float:
    """(max - min) / median: how much one side's runs differ from each other."""
    return (max(values) - min(values)) / median(values)


def throughput_notes(r: throughput.Result) -> str:
    t = [s.samples_per_second for s in r.trainer]
    b = [s.samples_per_second for s in r.baseline]
    gap = abs(1.0 - r.ratio)
    noise = max(rel_spread(t), rel_spread(b))
    if len(t) < 2:
        noisy = ("With one run per side there is no measure of the run-to-run noise; on a "
                 "shared machine it can be tens of percent.")
    elif gap <= noise:
        noisy = (f"The runs of one side differ by up to {noise:.0%} from each other, more than the "
                 f"{gap:.0%} between the medians: this run cannot tell the difference from noise.")
    else:
        noisy = (f"The runs of one side differ by up to {noise:.0%} from each other, less than the "
                 f"{gap:.0%} between the medians: the difference is probably real.")
    opening = (f"{outcome(r.ratio >= throughput.TARGET)}: the trainer runs at {r.ratio:.2f}x the "
               "hand-written loop.")
    same = ("Both sides ended with bit-identical weights (the same sha256 digest), so they did "
            "exactly the same arithmetic; what the trainer adds inside the timed loop is "
            "bookkeeping (a running loss sum, a stop-signal all-reduce every 20 iterations). "
            "Before training the trainer hides everything it has made so far (libraries, data, "
            "models) from the garbage collector (gc.freeze()); without it, the collector's full "
            "passes through those objects cost it about 8% here."
            if r.same_weights else
            "**The two sides ended with different weights**, so they did not train identically; "
            "the comparison is less exact than intended.")
    return (
        f"{opening} {noisy} {same} The timed part of a run is only a few seconds, so other work "
        "on the machine moves single runs a lot.\n\n"
        "Training throughput leaves out what an epoch also costs in the trainer: evaluation on the "
        "held-out split (the row \"trainer epochs with evaluation\", metrics.jsonl's `seconds` "
        "against `train_seconds`), writing a checkpoint after every epoch (not in `seconds`, which "
        "the trainer measures before it saves), and at the end the plot and summary. The last row, "
        "the whole torchrun command, includes all of that and the start-up, for both sides.\n"
    )


def k8s_notes(r: k8s_fanout.Result) -> str:
    """What the operator benchmark's numbers say, from the numbers."""
    med = k8s_fanout.Result.med
    out = []
    if r.fanout and r.fanout_bare:
        ours, bare = med(r.fanout), med(r.fanout_bare)
        created = median([x.creates_done for x in r.fanout])
        settle = [x.settle for x in r.fanout if x.settle is not None]
        recs = median([x.reconciles for x in r.fanout if x.reconciles is not None])
        cpu = median([x.operator_cpu for x in r.fanout if x.operator_cpu is not None])
        text = (f"{outcome(r.fanout_ok)} for one {r.nodes}-node job: its {r.nodes} pods exist {ours:.2f} s after "
                f"the create call (median), against {bare:.2f} s for the same pods created by the "
                f"benchmark itself from {r.threads} threads (the operator creates a job's pods "
                f"from its own pool, 32 threads by default, so it can be the faster side). The "
                f"create call itself returns after {created:.2f} s; the rest is the operator "
                "noticing the job and the API server storing the pods.")
        if settle and recs >= r.nodes / 2:
            text += (f" The pods are not the end of the operator's work: it stays busy for another "
                     f"{median(settle):.1f} s ({cpu:.1f} s of CPU) and makes {recs:.0f} reconciles of "
                     f"the one job. Every pod event reconciles the job, and every reconcile GETs the "
                     f"job, LISTs all its pods and GETs its Service, so a job of n nodes costs about n "
                     f"LISTs of up to n pods: quadratic. While that backlog runs, the operator's "
                     f"handler threads wait on the job's lock, and other jobs' events wait behind them.")
        out.append(text)
    if r.many and r.many_bare:
        ours, bare = med(r.many), med(r.many_bare)
        n = r.jobs * r.job_nodes
        recs = median([x.reconciles for x in r.many if x.reconciles is not None])
        reqs = median([x.total_requests for x in r.many])
        out.append(
            f"{outcome(r.many_ok)} for {r.jobs} jobs of {r.job_nodes} nodes created at once: all {n} pods exist "
            f"{ours:.2f} s after the first create call, against {bare:.2f} s for {n} bare pod creates "
            f"({ours / bare:.2f}x). The operator made {recs:,.0f} reconciles and the API server "
            f"answered {reqs:,.0f} requests (the baseline: "
            f"{median([x.total_requests for x in r.many_bare]):,.0f}), "
            f"{recs / r.jobs:.1f} reconcile(s) per job: a reconcile reads the job, lists its pods, "
            f"checks its Service, creates what is missing and patches the status, while the "
            f"operator's own status patches and the ADDED events of the pods it has just created "
            f"(still Pending) trigger none (docs/kubernetes.md).")
    if r.memory_jobs:
        per_job = (r.rss_jobs - r.rss_start) * MB_TO_KB / r.memory_jobs
        out.append(
            f"{outcome(r.memory_ok)} for memory: the operator uses {r.rss_start:.1f} MB (RSS) just after start "
            f"with no job (Python, kopf, the kubernetes client), and {r.rss_jobs:.1f} MB (peak "
            f"{r.hwm_jobs:.1f} MB) once {r.memory_jobs:,} suspended RazorJobs have their status, "
            f"about {per_job:.0f} kB more per job. A suspended job gets no pod and no Service; the "
            f"operator set the status of all {r.memory_jobs:,} in {r.suspended_seconds:.1f} s "
            f"({r.suspended_reconciles:,} reconciles).")
    return "\n\n".join(out) + "\n\n" + k8s_fanout.notes(r)


MB_TO_KB = 1000  # k8s_fanout reports MB of 10^6 bytes


def k8s_section(k8s: k8s_fanout.Result | None, k8s_error: str | None) -> str:
    if k8s is not None:
        return f"""### Operator fan-out and memory: razor-operator vs bare pod creates

{k8s_fanout.table(k8s)}
{k8s_notes(k8s)}"""
    why = (f"**Not measured: the benchmark failed.**\n\n```\n{k8s_error}\n```\n" if k8s_error
           else "Not measured in this run (`--skip-k8s`).\n")
    return f"""### Operator fan-out and memory: razor-operator vs bare pod creates

{why}"""


def k8s_targets(k8s: k8s_fanout.Result | None) -> str:
    """The operator benchmark's rows of the targets table."""
    kf = k8s_fanout
    nodes, jobs, job_nodes, memory_jobs = ((k8s.nodes, k8s.jobs, k8s.job_nodes, k8s.memory_jobs)
                                           if k8s else (kf.NODES, kf.JOBS, kf.JOB_NODES, kf.MEMORY_JOBS))
    fan = f"operator fan-out: one {nodes}-node job, create → all pods ≤ {kf.TARGET_FANOUT:g} s"
    many = (f"operator fan-out: {jobs} jobs x {job_nodes} nodes at once, first create → all pods "
            f"≤ {kf.TARGET_MANY:g} s")
    mem = f"operator memory with {memory_jobs:,} suspended RazorJobs ≤ {kf.TARGET_RSS_MB:g} MB"
    if k8s is None:
        return "".join(f"| {t} | not measured | |\n" for t in (fan, many, mem))
    med = kf.Result.med
    return (f"| {fan} | {med(k8s.fanout):.2f} s (bare pod creates {med(k8s.fanout_bare):.2f} s) "
            f"| {verdict(k8s.fanout_ok)} |\n"
            f"| {many} | {med(k8s.many):.2f} s (bare pod creates {med(k8s.many_bare):.2f} s) "
            f"| {verdict(k8s.many_ok)} |\n"
            f"| {mem} | RSS {k8s.rss_jobs:.1f} MB, peak {k8s.hwm_jobs:.1f} MB "
            f"(at start {k8s.rss_start:.1f} MB) | {verdict(k8s.memory_ok)} |\n")


def results(lo: launch_overhead.Result, tp: throughput.Result, k8s: k8s_fanout.Result | None = None,
            k8s_error: str | None = None) -> str:
    """The results section: every table, what they mean, the targets."""
    launch_ok = max(lo.ratio("first_step"), lo.ratio("total")) <= launch_overhead.TARGET
    tp_ok = tp.ratio >= throughput.TARGET
    return f"""### Launch overhead: razorctl submit --local vs bare torchrun

{launch_overhead.table(lo)}
{launch_notes(lo)}
### Trainer throughput: razor trainer vs a hand-written DDP loop

{throughput.table(tp)}
{throughput_notes(tp)}
{k8s_section(k8s, k8s_error)}
### Targets

| target | result | |
|---|---|---|
| launch overhead razorctl/bare ≤ {launch_overhead.TARGET:.2f}x | first step {lo.ratio("first_step"):.3f}x, total {lo.ratio("total"):.3f}x | {verdict(launch_ok)} |
| trainer throughput trainer/baseline ≥ {throughput.TARGET:.2f}x | {tp.ratio:.3f}x | {verdict(tp_ok)} |
{k8s_targets(k8s)}"""


def k8s_measured(settings: Settings, k8s: k8s_fanout.Result | None) -> str:
    """Item 3 of "What is measured"."""
    kf = k8s_fanout
    nodes, jobs, job_nodes, memory_jobs, threads = (
        (k8s.nodes, k8s.jobs, k8s.job_nodes, k8s.memory_jobs, k8s.threads) if k8s
        else (kf.NODES, kf.JOBS, kf.JOB_NODES, kf.MEMORY_JOBS, kf.THREADS))
    runs = (f"{len(k8s.fanout)} run(s) of (a) and {len(k8s.many)} of (b)" if k8s
            else "Not measured in this run")
    return f"""3. **Operator fan-out and memory** (`benchmarks/k8s_fanout.py`): a real control plane on
   loopback (`tests/kube_cluster.py`: etcd, kube-apiserver, kube-controller-manager; no kubelet, so
   pods are stored and never run) with `crds/razorjob.yaml`, and one `razor-operator` process
   (`python -m razor_operator --kubeconfig ... --namespace NS --liveness URL --metrics-port N`)
   watching the benchmark's namespace. (a) One RazorJob of {nodes} nodes (config `c.yaml`): from
   its create call until all its pods exist, as a watch of the namespace's pods delivers them;
   a fresh job each run, the previous one deleted and its pods gone first. (b) {jobs} RazorJobs of
   {job_nodes} nodes created at once from {threads} threads: from the first create call until all
   {jobs * job_nodes} pods exist. {runs}. The baseline of both, alternating with the operator's
   runs: the benchmark creates the same pods itself (the operator's pod bodies, owned by a RazorJob
   that exists) from {threads} threads with the kubernetes Python client, in a namespace no
   operator watches. Before each run the operator is left to go idle (under 3% of a core for 1 s).
   (c) Memory: a second, fresh operator in its own namespace; its VmRSS and VmHWM
   (`/proc/PID/status`) just after start, and once {memory_jobs:,} RazorJobs of 1 node with
   `suspend: true` (no pod, no Service: the operator only sets their status) are all `Suspended`
   and the operator is idle. API requests are the API server's `apiserver_request_total` (every
   client, watches left out); reconciles are the operator's `razor_reconcile_seconds_count`.
"""


def page(settings: Settings, quick: bool, lo: launch_overhead.Result, tp: throughput.Result,
         load_before: str, load_after: str, k8s: k8s_fanout.Result | None = None,
         k8s_error: str | None = None) -> str:
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    hidden = ",".join(map(str, tp.hidden))
    rough = ("\n**These numbers come from a quick run (`--quick`, fewer repetitions): treat them "
             "as rough.**\n" if quick else "")
    return f"""# Benchmarks

This page is written by `benchmarks/run.py --write`; rerun it rather than editing by hand.
Numbers are medians with (min–max) over the repetitions; times in seconds.
{rough}
## What is measured

1. **Launch overhead** (`benchmarks/launch_overhead.py`): `razorctl submit --local` of a RazorJob
   against a bare `torchrun` of the same trainer and config (`trainer/configs/digits_mlp.yaml`,
   `schedule.epochs={lo.epochs}`), 1 node x 2 processes on CPU (gloo), `OMP_NUM_THREADS=1` and
   `CUDA_VISIBLE_DEVICES=-1` on both sides, a fresh work dir per run. Time to first optimizer step
   is the trainer's `first_step_time` (wall clock, in `summary.json`) minus the wall clock just
   before the command was spawned; total is the command's wall time. {settings.launch_warmup}
   untimed warm-up pair(s), then {len(lo.razorctl)} measured pairs, alternating razorctl, bare,
   razorctl, bare, ...
2. **Trainer throughput** (`benchmarks/throughput.py`): training samples per second of the
   trainer (`train_samples_per_second` in `summary.json`: global samples over the time spent in
   the epochs' training iterations) against a minimal hand-written DDP loop in the benchmark file
   with the same data, model (`model.hidden=[{hidden}]`), batch (32 per process, sampler indices
   sliced into batches), optimizer settings after lr scaling, cosine schedule and
   `schedule.epochs={tp.epochs}`, timed the same way. Both run under the same `torchrun`,
   2 processes, gloo, `OMP_NUM_THREADS=1`. {len(tp.trainer)} pairs, alternating.
{k8s_measured(settings, k8s)}
## Machine

{machine(load_before, load_after)}- date: {when}

## How to reproduce

```sh
make bench        # meant to run exactly this:
{COMMAND}
```

`benchmarks/run.py --quick` takes fewer repetitions; without `--write` it only prints the
results. Each benchmark also runs alone: `.venv/bin/python benchmarks/launch_overhead.py`,
`.venv/bin/python benchmarks/throughput.py`, `.venv/bin/python benchmarks/k8s_fanout.py`,
`.venv/bin/python benchmarks/slurm_submit.py`, `.venv/bin/python benchmarks/k8s_node.py`
(`--help` for their settings). The operator benchmark needs the Kubernetes binaries that
`make k8s-binaries` builds and caches (`scripts/k8s-binaries.sh`; `$RAZOR_K8S_BIN` points at
others); `benchmarks/run.py --skip-k8s` leaves it out. The node benchmark needs what `make test`
sets up for `tests/node` (the node's binaries, podman, helm; root) and the one-node cluster to
itself; `--skip-node` leaves it out, `--skip-slurm` the SLURM one.

## Results

{results(lo, tp, k8s, k8s_error)}"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions (rough numbers)")
    p.add_argument("--write", action="store_true", help=f"rewrite {DOC.relative_to(ROOT)}")
    p.add_argument("--skip-k8s", action="store_true",
                   help="leave out the operator benchmark (it starts a Kubernetes control plane)")
    p.add_argument("--skip-slurm", action="store_true",
                   help="leave out the SLURM benchmark (it uses the test cluster of scripts/slurm-setup.sh)")
    p.add_argument("--skip-node", action="store_true",
                   help="leave out the benchmark on a real one-node Kubernetes (k8s_node.py: it starts "
                        "tests/kube_node.py's cluster, which must not be running already)")
    args = p.parse_args()
    settings = QUICK if args.quick else FULL
    progress = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    load_before = load()
    lo = launch_overhead.measure(settings.launch_repeat, warmup=settings.launch_warmup, progress=progress)
    tp = throughput.measure(settings.throughput_repeat, progress=progress)
    k8s, k8s_error = None, None
    if not args.skip_k8s:
        try:
            k8s = k8s_fanout.measure(settings.k8s_repeat, many_repeat=settings.k8s_many_repeat,
                                     progress=progress)
        except Exception as exc:  # noqa: BLE001 (the other results are still reported)
            k8s_error = f"{type(exc).__name__}: {exc}"
            progress(f"k8s_fanout failed: {k8s_error}")
    slurm_text, slurm_error = "", None
    if not args.skip_slurm:
        try:
            sr = slurm_submit.measure(settings.throughput_repeat, progress=progress)
            slurm_text = slurm_section(sr)
        except Exception as exc:  # noqa: BLE001 (the other results are still reported)
            slurm_error = f"{type(exc).__name__}: {exc}"
            slurm_text = f"\n### SLURM: submit to first optimizer step\n\nThe benchmark failed: {slurm_error}\n"
            progress(f"slurm_submit failed: {slurm_error}")
    node_text, node_error = "", None
    if not args.skip_node:
        try:
            nr = k8s_node.measure(settings.node_repeat, progress,
                                  recovery_repeat=settings.node_recovery_repeat)
            node_text = k8s_node.section(nr, COMMAND + (" --quick" if args.quick else ""))
        except Exception as exc:  # noqa: BLE001 (the other results are still reported)
            node_error = f"{type(exc).__name__}: {exc}"
            node_text = (f"\n### {k8s_node.TITLE}\n\n**Not measured: the benchmark failed.**\n\n"
                         f"```\n{node_error}\n```\n")
            progress(f"k8s_node failed: {node_error}")
    print(results(lo, tp, k8s, k8s_error) + slurm_text + node_text, end="")
    if args.write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(page(settings, args.quick, lo, tp, load_before, load(), k8s, k8s_error)
                       + slurm_text + node_text)
        progress(f"wrote {DOC}")
    return 1 if k8s_error or slurm_error or node_error else 0


def slurm_section(r: "slurm_submit.Result") -> str:
    return f"""
### SLURM: razorctl submit --slurm vs a hand-written sbatch script

`benchmarks/slurm_submit.py`: the same job (`trainer/configs/digits_mlp.yaml`, 1 node x 2 CPU
processes) submitted to the one-node test cluster of `scripts/slurm-setup.sh` by
`razorctl submit --slurm` and by a minimal hand-written sbatch script (`srun torchrun ...`),
alternating, the queue empty before each run. Target: submit to first optimizer step at most
1 s more than the hand-written script.

{slurm_submit.table(r)}
{slurm_submit.notes(r)}"""


if __name__ == "__main__":
    sys.exit(main())
