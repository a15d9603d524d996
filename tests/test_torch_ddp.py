"""DistributedDataParallel: a model with DropBlock trains on 2 CPU processes (gloo)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist
    from torch import nn
    import dropblock_torch as dt
    from dropblock_torch import schedules

    rank, world = int(sys.argv[1]), 2
    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{sys.argv[2]}")
    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), dt.DropBlock2d(schedules.ramp(0.2, 5), 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.5)
    torch.manual_seed(1000 + rank)  # then a different stream per rank: different masks
    data = torch.Generator().manual_seed(7)
    x = torch.randn(16, 1, 12, 12, generator=data)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(ddp(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    mask = (model[2](torch.ones(1, 8, 12, 12)) == 0).flatten().tolist()
    weights = model[0].weight.detach().flatten().tolist()
    print(json.dumps({"losses": losses, "mask": mask, "weights": weights, "step": int(model[2].step)}), flush=True)
    dist.destroy_process_group()
    # Leave without running C++ static destructors: under load gloo's threads can abort the exit
    # ("terminate called without an active exception") after all the work is done.
    os._exit(0)
    """
)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_trains_with_per_rank_masks(tmp_path):
    script = tmp_path / "ddp_worker.py"
    script.write_text(SCRIPT)
    port = str(free_port())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), port],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    for result in results:
        assert result["step"] == 16
        assert result["losses"][-1] < result["losses"][0]
    # DDP keeps the weights in sync, while each rank drew its own masks.
    assert results[0]["weights"] == results[1]["weights"]
    assert results[0]["mask"] != results[1]["mask"]
