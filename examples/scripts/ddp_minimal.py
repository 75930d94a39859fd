"""A user's own DDP script, as razor runs it: it reads only what torchrun and razor set.

    razorctl submit --local examples/razorjob-user-script.yaml
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=100)
args = parser.parse_args()

cuda = torch.cuda.is_available()
dist.init_process_group("nccl" if cuda else "gloo")
rank, world = dist.get_rank(), dist.get_world_size()
device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")

torch.manual_seed(0)
model = DDP(nn.Linear(8, 1).to(device), device_ids=[device.index] if cuda else None)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
true_w = torch.arange(8, dtype=torch.float32, device=device) / 8
gen = torch.Generator(device="cpu").manual_seed(rank)
for step in range(args.steps):
    x = torch.randn(64, 8, generator=gen).to(device)
    loss = ((model(x).squeeze(1) - x @ true_w) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if rank == 0 and (step + 1) % 10 == 0:
        print(f"step {step + 1}/{args.steps} loss {loss.item():.5f}", flush=True)

if rank == 0:
    print(f"done on {world} processes (job {os.environ['RAZOR_JOB_NAME']}, attempt "
          f"{os.environ['RAZOR_ATTEMPT']}); final loss {loss.item():.5f}", flush=True)
dist.destroy_process_group()
