"""razor-operator's command line: what --help says of the cluster's defaults (--defaults)."""

from __future__ import annotations

import importlib
import re

import pytest

from razor.spec import CLUSTER_DEFAULT_KEYS

main = importlib.import_module("razor_operator.main")


def test_help_lists_every_key_a_cluster_can_default(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as done:
        main.parse_args(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    defaults = text[text.rindex("--defaults FILE"):]  # the option, not the usage line
    listed = re.search(r"its keys: ([\w, ]+)", defaults)
    assert listed, defaults
    assert [k.strip() for k in listed.group(1).split(",")] == list(CLUSTER_DEFAULT_KEYS)
    assert "cpuImage" in CLUSTER_DEFAULT_KEYS


def test_defaults_file_with_a_cpu_image_is_read(tmp_path):
    path = tmp_path / "defaults.yaml"
    path.write_text("image: registry.local/razor-trainer:2\ncpuImage: registry.local/razor-trainer:2-cpu\n")
    args = main.parse_args(["--defaults", str(path)])
    assert args.job_defaults == {"image": "registry.local/razor-trainer:2",
                                 "cpuImage": "registry.local/razor-trainer:2-cpu"}
