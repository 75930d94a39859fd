"""A user's own training script: asserts the launcher contract, then checks the gang with gloo."""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

env = os.environ
for name in ("MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "NPROC_PER_NODE", "GPUS_PER_NODE",
             "RAZOR_JOB_NAME", "RAZOR_WORK_DIR", "RAZOR_ATTEMPT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
    assert env.get(name), f"{name} is not set"
rank, local_rank, world = int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"])
nnodes, node_rank, nproc = int(env["NNODES"]), int(env["NODE_RANK"]), int(env["NPROC_PER_NODE"])
assert world == nnodes * nproc, (world, nnodes, nproc)
assert rank == node_rank * nproc + local_rank, (rank, node_rank, nproc, local_rank)

dist.init_process_group("gloo")
t = torch.tensor([float(rank)])
dist.all_reduce(t)
assert t.item() == sum(range(world)), t
out = Path(env["RAZOR_WORK_DIR"])
out.mkdir(parents=True, exist_ok=True)
record = {k: env[k] for k in ("MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "NPROC_PER_NODE",
                              "RANK", "LOCAL_RANK", "WORLD_SIZE", "RAZOR_JOB_NAME", "RAZOR_ATTEMPT",
                              "CUDA_VISIBLE_DEVICES")}
record["args"] = sys.argv[1:]
record["rank_sum"] = t.item()
(out / f"rank{rank}.json").write_text(json.dumps(record))
dist.destroy_process_group()
