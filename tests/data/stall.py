"""A job that hangs in a collective after it has reported progress (razor.node's stall check).

Every rank reports three steps of epoch 1 (razor.progress.report) and writes its pid to
``$STALL_DIR/pid<RANK>``; then rank 1 sleeps for an hour while rank 0 waits for it in an
all_reduce (gloo, CPU) that never completes. Nothing fails: only the missing progress says so.
"""

import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from razor.progress import report

dist.init_process_group("gloo", timeout=timedelta(hours=1))
rank = dist.get_rank()
for step in range(1, 4):
    t = torch.ones(1)
    dist.all_reduce(t)
    report(stage="train", epoch=1, epochs=2, step=step, steps=10, metrics={"loss": 1.0 / step})
    time.sleep(0.1)
(Path(os.environ["STALL_DIR"]) / f"pid{rank}").write_text(str(os.getpid()))
if rank == 1:
    time.sleep(3600)
else:
    dist.all_reduce(torch.ones(1))  # never completes: rank 1 does not come
