"""Every example RazorJob is valid against the CRD on a real API server (kubectl apply --dry-run=server)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from razor.spec import parse_job

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("razorjob-*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_accepted_by_the_api_server(cluster, namespace, path: Path):
    res = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), "-o", "yaml")
    stored = yaml.safe_load(res.stdout)
    assert stored["kind"] == "RazorJob"
    assert stored["spec"]["suspend"] is False  # a server-side default was filled
    # The stored job is the one razorctl reads: nothing the API server filled in disagrees.
    job = parse_job(stored)
    assert job.name == stored["metadata"]["name"]
