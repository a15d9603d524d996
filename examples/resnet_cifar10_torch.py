"""ResNet-18 for 32x32 images with scheduled DropBlock, in PyTorch: the twin of the Flax example.

The same network, placement and schedule as ``resnet_cifar10_flax.py``. Under ``torchrun`` it
trains with DistributedDataParallel (gloo on the CPU, nccl on GPUs), each rank drawing its
own masks.

    python examples/resnet_cifar10_torch.py --data-dir cifar-10-batches-py --epochs 30
    torchrun --nproc-per-node 2 examples/resnet_cifar10_torch.py --dataset digits --width 16
    python examples/resnet_cifar10_torch.py --synthetic --steps 3 --batch-size 8
"""

from __future__ import annotations

import os
import pathlib
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dropblock_common.presets import resnet_placement  # noqa: E402
from dropblock_torch import DropBlock2d, schedules  # noqa: E402
from examples import datasets, training  # noqa: E402


def regulariser_factory(args, total_steps: int):
    """``stage -> (make_layer, on_skip)``: DropBlock, dropout or nothing, per the command line."""
    placement = resnet_placement(args.preset, args.block_size)

    def for_stage(stage: int):
        if stage not in placement or args.no_dropblock:
            return nn.Identity, False
        if args.dropout:
            return (lambda: nn.Dropout(args.dropout)), placement[stage].on_skip
        p = placement[stage]
        schedule = schedules.ramp(args.drop_prob * p.rate_scale, total_steps)
        return (lambda: DropBlock2d(schedule, p.block_size)), p.on_skip

    return for_stage


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, make_layer, on_skip: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        project = stride != 1 or cin != cout
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if project
            else nn.Identity()
        )
        self.drop1, self.drop2 = make_layer(), make_layer()
        self.drop_skip = make_layer() if on_skip else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop1(torch.relu(self.bn1(self.conv1(x))))
        y = self.drop2(self.bn2(self.conv2(y)))
        return torch.relu(y + self.drop_skip(self.shortcut(x)))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: a 3x3 stem, four stages of two basic blocks, a linear head."""

    def __init__(self, channels: int, classes: int, width: int, regulariser):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, cin = [], width
        for stage, (multiple, stride) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2)), start=1):
            make_layer, on_skip = regulariser(stage)
            for index in range(2):
                blocks.append(BasicBlock(cin, width * multiple, stride if index == 0 else 1, make_layer, on_skip))
                cin = width * multiple
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)


@torch.no_grad()
def evaluate(model: nn.Module, split, batch_size: int, device: torch.device) -> float:
    model.eval()
    hits = 0
    for images, labels in datasets.batches(split.test_images, split.test_labels, batch_size, None):
        hits += int((model(to_tensor(images, device)).argmax(1).cpu().numpy() == labels).sum())
    model.train()
    return hits / len(split.test_images)


def main(argv: list[str] | None = None) -> dict:
    args = training.arguments(__doc__.splitlines()[0], argv)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {world} processes.")
    split = datasets.load(args.dataset, args.data_dir, args.train_size, args.seed)

    steps_per_epoch = len(split.train_images) // args.batch_size
    total_steps = (
        steps_per_epoch * args.epochs if args.steps is None else min(args.steps, steps_per_epoch * args.epochs)
    )
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = ResNet18(split.channels, split.classes, args.width, regulariser_factory(args, total_steps)).to(device)
    torch.manual_seed(args.seed * 1000 + rank + 1)  # then each rank its own DropBlock masks
    trained = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(total_steps, 1))

    rng, history, step = np.random.default_rng(args.seed), [], 0
    per_rank = args.batch_size // world
    for epoch in range(1, args.epochs + 1):
        losses, accuracies = [], []
        progress = tqdm(
            datasets.batches(split.train_images, split.train_labels, args.batch_size, rng),
            total=steps_per_epoch,
            desc=f"epoch {epoch}",
            disable=args.quiet or rank > 0,
            leave=False,
        )
        for images, labels in progress:
            images, labels = (
                images[rank * per_rank : (rank + 1) * per_rank],
                labels[rank * per_rank : (rank + 1) * per_rank],
            )
            logits = trained(to_tensor(images, device))
            targets = torch.from_numpy(labels).to(device)
            loss = nn.functional.cross_entropy(logits, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            accuracies.append((logits.argmax(1) == targets).float().mean().item())
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
            step += 1
            if step >= total_steps:
                break
        history.append(
            training.epoch_entry(epoch, step, losses, accuracies, evaluate(model, split, args.batch_size, device))
        )
        if not args.quiet and rank == 0:
            print(training.epoch_line(history[-1]))
        if step >= total_steps:
            break
    metrics = training.save(args.out, args, history, "torch") if rank == 0 else {"history": history}
    if world > 1:
        dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    main()
