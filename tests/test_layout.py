"""The project's layout: nothing at the top level shadows a standard-library module."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_top_level_folders_do_not_shadow_the_standard_library():
    # `python -m ...` from the repository root puts the root first on sys.path.
    code = "import operator, sys; assert operator.__file__.startswith(sys.base_prefix), operator.__file__"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for name in sys.stdlib_module_names:
        assert not (ROOT / name / "__init__.py").exists(), f"{name}/ would shadow the standard library"
