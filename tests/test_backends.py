"""One Backend interface behind every razorctl command; what razorctl says when a job cannot run."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from conftest import CONFIGS, job_doc
from razor import cli
from razor.backends import BACKENDS, Backend, Refused, get

METHODS = ("render", "submit", "status", "list", "logs", "cancel", "wait")


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_backend_implements_the_interface(name: str):
    module, cls = BACKENDS[name]
    impl = getattr(importlib.import_module(module), cls)
    assert issubclass(impl, Backend) and not inspect.isabstract(impl) and impl.name == name
    for method in METHODS:
        assert getattr(impl, method) is not getattr(Backend, method), f"{cls}.{method}"
    backend = get(name, cwd=Path("/x"), namespace="ns")  # options of other backends are ignored
    assert isinstance(backend, impl) and backend.cwd == Path("/x")


class Recorder(Backend):
    """A backend that records what razorctl asks of it."""

    name = "recorder"
    calls: list = []

    def __init__(self, **options):
        super().__init__(**options)
        self.options = options

    def _record(self, method, *args):
        Recorder.calls.append((self.options["which"], method, *args))
        return 0

    def render(self, job, source, fmt="text"):
        self._record("render", job.name, source, fmt)
        return "rendered\n"

    def submit(self, job, source):
        return self._record("submit", job.name, source)

    def status(self, ref, fmt="text"):
        return self._record("status", ref, fmt)

    def list(self, all_namespaces=False, fmt="text"):
        return self._record("list", all_namespaces, fmt)

    def logs(self, ref, rank, follow):
        return self._record("logs", ref, rank, follow)

    def cancel(self, ref):
        return self._record("cancel", ref)

    def wait(self, ref, timeout):
        return self._record("wait", ref, timeout)


def test_every_razorctl_command_is_one_method_of_the_backend_it_names(tmp_path: Path, monkeypatch, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_doc("j", config="c.yaml")))
    monkeypatch.setattr(cli, "get", lambda name, **options: Recorder(which=name, **options))
    Recorder.calls = []
    f = str(job)
    for argv in (["submit", f], ["submit", "--local", f], ["submit", "--slurm", f],
                 ["render", f, "-o", "json"], ["render", "--local", f], ["render", "--slurm", f],
                 ["status", "j", "-o", "yaml"], ["status", "--slurm", "42"], ["list", "-A"], ["list", "--slurm"],
                 ["logs", "j", "--rank", "1", "-f"], ["logs", "--slurm", "42"], ["cancel", "j"],
                 ["cancel", "--slurm", "42"], ["wait", "j", "--timeout", "5"], ["wait", "--slurm", "42"]):
        assert cli.main(argv) == 0, argv
    assert Recorder.calls == [
        ("kubernetes", "submit", "j", f), ("local", "submit", "j", f), ("slurm", "submit", "j", f),
        ("kubernetes", "render", "j", f, "json"), ("local", "render", "j", f, "text"),
        ("slurm", "render", "j", f, "text"),
        ("kubernetes", "status", "j", "yaml"), ("slurm", "status", "42", "text"),
        ("kubernetes", "list", True, "text"), ("slurm", "list", False, "text"),
        ("kubernetes", "logs", "j", 1, True), ("slurm", "logs", "42", None, False),
        ("kubernetes", "cancel", "j"), ("slurm", "cancel", "42"),
        ("kubernetes", "wait", "j", 5.0), ("slurm", "wait", "42", 3600.0),
    ]
    assert capsys.readouterr().out == "rendered\n" * 3


def test_the_local_backend_says_when_no_such_job_ran_here(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    with pytest.raises(Refused, match="no local job 'j'"):
        get("local", cwd=tmp_path).status("j")


@pytest.mark.parametrize("command", ["render", "submit"])
@pytest.mark.parametrize("work_dir", ["/tmp/a b", "/tmp/$HOME/wd", "wd;id"])
def test_an_unsafe_value_for_sbatch_is_a_field_named_error(tmp_path: Path, monkeypatch, capsys, command: str,
                                                            work_dir: str):
    """razorctl render|submit --slurm with a work dir sbatch cannot take safely: exit 2 and the
    field named, no traceback, nothing written or submitted."""
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_doc("j", config=str(CONFIGS / "digits_mlp.yaml"), workDir=work_dir)))
    monkeypatch.chdir(tmp_path)
    assert cli.main([command, "--slurm", str(job)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("razorctl: error: RazorJob j is not a RazorJob SLURM can run:\n  spec.workDir: ")
    assert "cannot be passed to sbatch safely" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [job]


def test_a_directory_sbatch_cannot_take_is_named_too(tmp_path: Path, monkeypatch, capsys):
    here = tmp_path / "my runs"
    here.mkdir()
    job = here / "job.yaml"
    job.write_text(yaml.safe_dump(job_doc("j", config=str(CONFIGS / "digits_mlp.yaml"), workDir="/tmp/wd")))
    monkeypatch.chdir(here)
    assert cli.main(["render", "--slurm", str(job)]) == 2
    assert "  --chdir (the directory razorctl runs in): " in capsys.readouterr().err


def test_render_notes_that_the_operator_allocates_a_host_network_port(tmp_path: Path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_doc("hn", config="c.yaml", hostNetwork=True, port=29700)))
    assert cli.main(["render", str(job), "--kubeconfig", str(tmp_path / "none")]) == 0
    out = capsys.readouterr()
    assert "razorctl: note: hostNetwork: spec.port (29700) is not used; the operator allocates a port" in out.err
    _, *pods = yaml.safe_load_all(out.out)
    assert pods[0]["spec"]["hostNetwork"] is True


def test_status_and_list_show_counts_counted_restarts_and_the_failed_ranks():
    """What razorctl status/list print from the operator's bounded status (no per-rank list at
    scale): counts by phase, restarts counted and not, the next attempt, the failed ranks."""
    from razor.backends import kubernetes

    obj = {"metadata": {"name": "big", "namespace": "ml", "creationTimestamp": None},
           "spec": {"nnodes": 4096, "gpusPerNode": 8},
           "status": {"phase": "Restarting", "attempt": 3, "restarts": 2, "countedRestarts": 1,
                      "disruptionRestarts": 1, "nextAttemptTime": "2026-12-01T10:00:20Z",
                      "ranksByPhase": {"running": 0, "pending": 4090, "succeeded": 0, "failed": 6},
                      "failedRanks": [{"rank": 17, "attempt": 2, "exitCode": 137, "reason": "OOMKilled",
                                       "class": "Failure", "node": "n3", "message": "rank 17 (pod big-17) "
                                       "exited with code 137 (OOMKilled)"}]}}
    text = kubernetes.describe(obj)
    assert "  attempt:  3, restarts: 2 (counted 1, disruptions 1)" in text
    assert "  ranks:    0 running, 4090 pending, 0 succeeded, 6 failed" in text
    assert "  nextAttemptTime: 2026-12-01T10:00:20Z" in text
    assert ("  failed: rank 17 (attempt 2) exit code 137 (OOMKilled) [Failure] on node n3: "
            "rank 17 (pod big-17) exited with code 137 (OOMKilled)") in text
    header, row = kubernetes.table([obj], False).splitlines()
    assert header.split() == ["NAME", "PHASE", "NODES", "GPUS", "RUNNING", "RESTARTS", "COUNTED", "AGE"]
    assert row.split() == ["big", "Restarting", "4096", "8", "0", "2", "1", "-"]
