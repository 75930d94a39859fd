"""Rank 1 raises ValueError after the gang has formed; rank 0 waits until torchrun stops it.

The entry point is decorated with torchelastic's ``@record`` (so that the traceback reaches the
error file razor.node reads) unless ``RECORD=0``: a script that does not, as docs/trainer.md says.
"""

import os
import time

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record


def check_lr(lr: float) -> float:
    if lr <= 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    return lr


def main() -> None:
    dist.init_process_group("gloo")
    if dist.get_rank() == 1:
        check_lr(-0.5)
    time.sleep(120)  # rank 0: stopped by torchrun once rank 1 has failed


if __name__ == "__main__":
    (record(main) if os.environ.get("RECORD", "1") == "1" else main)()
