"""A user's own script for a multi-node job: which host each rank ran on, gathered over gloo.

Every rank writes ``$RAZOR_WORK_DIR/rank<R>.json``: its own record (hostname, the address the
hostname resolves to, SLURM's node name, the contract's NODE_RANK and MASTER_ADDR, its network
namespace) and every rank's record, as all_gather_object brought them over the process group.
"""

import json
import os
import socket
from pathlib import Path

import torch.distributed as dist

env = os.environ
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
host = socket.gethostname()
me = {
    "rank": rank,
    "world_size": world,
    "hostname": host,
    "address": socket.gethostbyname(host),
    "slurmd_nodename": env.get("SLURMD_NODENAME"),
    "node_rank": int(env["NODE_RANK"]),
    "master_addr": env["MASTER_ADDR"],
    "netns": os.readlink("/proc/self/ns/net"),
}
everyone = [None] * world
dist.all_gather_object(everyone, me)
out = Path(env["RAZOR_WORK_DIR"])
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{rank}.json").write_text(json.dumps({"me": me, "all": everyone}, indent=2) + "\n")
dist.barrier()
dist.destroy_process_group()
