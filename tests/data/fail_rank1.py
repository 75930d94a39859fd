"""Rank 1 fails after the gang has formed; the others would wait in a barrier for a long time."""

import os
import sys
from datetime import timedelta

import torch.distributed as dist

dist.init_process_group("gloo", timeout=timedelta(hours=1))
if os.environ["RANK"] == "1":
    print("rank 1: failing on purpose", flush=True)
    sys.exit(3)
dist.barrier()  # never completes: rank 1 is gone
