"""Train the digits classifier on several processes: DDP or FSDP2, over torch.distributed.

    torchrun --nproc-per-node=2 examples/train_digits_distributed.py --mode ddp
    torchrun --nproc-per-node=2 examples/train_digits_distributed.py --mode fsdp2 --compile

CPU, gloo backend (torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT). Every rank
loads the same scikit-learn digits split; each global batch is cut into one slice per rank.

- ``--mode ddp``: ``DistributedDataParallel`` of the model; gradients are averaged across ranks
  in backward. ``--compile``: ``torch.compile`` of the DDP module (dynamo's DDPOptimizer splits
  the graph at gradient-bucket boundaries).
- ``--mode fsdp2``: ``fully_shard`` on each layer with parameters (the head aside: the fused
  loss reads its weight directly, so the root unit holds it) and on the root; parameters,
  gradients and Adam's moments are sharded (DTensor Shard(0)), and ``opslib.optim.Adam`` steps
  each rank's shards through ``customgrad::adam_step_``'s sharding rule. ``--compile``: each
  layer compiled with ``fullgraph=True`` before it is sharded (FSDP2's hooks stay outside the
  graphs).

The model is opslib.models.MLPClassifier (Linear, LayerNorm, LearnedSiLU, Tanh and the fused
linear + cross-entropy, all customgrad ops) behind opslib.models.TrainingLoss. Rank 0 prints the
loss per epoch and the test accuracy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_digits import load_data  # noqa: E402

import opslib  # noqa: E402
from opslib.models import MLPClassifier, TrainingLoss  # noqa: E402


def wrap(model: TrainingLoss, mode: str, compile_model: bool) -> torch.nn.Module:
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(model)
        return torch.compile(ddp) if compile_model else ddp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.model.net[:-1]:
        if any(True for _ in layer.parameters()):
            if compile_model:
                layer.compile(fullgraph=True, dynamic=False)
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["ddp", "fsdp2"], default="ddp")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64, help="global, over all ranks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must divide by the {world} ranks")
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    x_tr, y_tr, x_te, y_te = load_data(args.seed)
    model = TrainingLoss(MLPClassifier())
    step_model = wrap(model, args.mode, args.compile)
    optimizer = opslib.optim.Adam(model.parameters(), lr=3e-3)
    if rank == 0:
        print(
            f"digits on {world} ranks ({args.mode}{', compiled' if args.compile else ''}): "
            f"{len(x_tr)} train / {len(x_te)} test images, global batch {args.batch_size}",
            flush=True,
        )
    per_rank = args.batch_size // world
    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_tr))  # the same on every rank: one shared seed
        # whole global batches only, so that every rank gets a slice of the same size
        batches = len(x_tr) // args.batch_size
        losses = []
        for b in range(batches):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            mine = idx[rank * per_rank : (rank + 1) * per_rank]
            optimizer.zero_grad(set_to_none=True)
            loss = step_model(x_tr[mine], y_tr[mine])
            loss.backward()
            optimizer.step()
            batch_loss = loss.detach().clone()
            dist.all_reduce(batch_loss, op=dist.ReduceOp.AVG)
            losses.append(batch_loss.item())
        if rank == 0:
            print(f"epoch {epoch + 1:3d}: loss {statistics.fmean(losses):.4f}", flush=True)
    seconds = time.perf_counter() - start
    with torch.no_grad():  # every rank runs it (FSDP2 gathers the parameters in forward)
        accuracy = (step_model(x_te).argmax(dim=1) == y_te).float().mean().item()
    if rank == 0:
        print(f"test accuracy {accuracy:.4f} after {args.epochs} epochs in {seconds:.1f} s")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    # Leave without interpreter teardown: torch 2.13's gloo threads, torn down with the
    # interpreter, can abort a finished rank ("terminate called without an active exception",
    # seen in about 3% of the tests' distributed runs; pytorch#179291 describes the race).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
