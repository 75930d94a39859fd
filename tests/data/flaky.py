"""A user script whose early attempts fail: the gang's restarts, with real processes.

Every rank forms the gang (gloo), then appends ``{"attempt", "rank", "port", "host"}`` to
``$RAZOR_WORK_DIR/attempts.jsonl`` (with its host). While ``RAZOR_ATTEMPT`` is at most ``FAIL_ATTEMPTS`` (``all``:
every attempt; default 1), rank ``FAIL_RANK`` (default 1) exits with ``FAIL_CODE`` (default 3)
and the others wait for it in a barrier; with ``HOLD_ATTEMPTS`` (default 0) the attempts up to it
instead write ``$RAZOR_WORK_DIR/ready<rank>`` and wait to be stopped. Later attempts pass the
barrier and exit 0.
"""

import json
import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

dist.init_process_group("gloo", timeout=timedelta(minutes=5))
attempt, rank = int(os.environ["RAZOR_ATTEMPT"]), int(os.environ["RANK"])
work = Path(os.environ["RAZOR_WORK_DIR"])
with (work / "attempts.jsonl").open("a") as fh:
    fh.write(json.dumps({"attempt": attempt, "rank": rank, "port": os.environ["MASTER_PORT"],
                         "host": socket.gethostname()}) + "\n")
if attempt <= int(os.environ.get("HOLD_ATTEMPTS", "0")):
    (work / f"ready{rank}").write_text(str(os.getpid()))
    while True:
        time.sleep(0.1)
fail = os.environ.get("FAIL_ATTEMPTS", "1")
if (fail == "all" or attempt <= int(fail)) and rank == int(os.environ.get("FAIL_RANK", "1")):
    print(f"rank {rank}: failing on purpose on attempt {attempt}", flush=True)
    sys.exit(int(os.environ.get("FAIL_CODE", "3")))
dist.barrier()
print(f"rank {rank}: attempt {attempt} passed", flush=True)
dist.destroy_process_group()
