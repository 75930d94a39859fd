#!/usr/bin/env python
"""The seed's training entry point, kept working:

    CUDA_VISIBLE_DEVICES=-1 python tools/train.py CONFIG [--work-dir DIR] [--cfg-options k=v ...]
    torchrun --nproc-per-node 2 tools/train.py CONFIG --launcher pytorch

It runs razor's trainer (``python -m razor_trainer``), installed or straight from this checkout.
"""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _trainer_main():
    try:
        from razor_trainer.train import main
    except ImportError:  # not installed: load trainer/ from this checkout as razor_trainer
        sys.path.insert(0, str(ROOT))
        spec = importlib.util.spec_from_file_location(
            "razor_trainer", ROOT / "trainer" / "__init__.py",
            submodule_search_locations=[str(ROOT / "trainer")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["razor_trainer"] = module
        spec.loader.exec_module(module)
        from razor_trainer.train import main
    return main


if __name__ == "__main__":
    sys.exit(_trainer_main()())
