"""ResNet-18 for 32x32 images with scheduled DropBlock, in Flax NNX and optax.

DropBlock goes where the paper (Ghiasi et al., 2018) puts it: stages 3 and 4, after the
convolutions and on the skip connections, ``drop_prob`` ramped linearly from 0 over training
(stage 3 at a quarter of the rate). The batch is sharded across all local devices.

    python examples/resnet_cifar10_flax.py --data-dir cifar-10-batches-py --epochs 30
    python examples/resnet_cifar10_flax.py --dataset digits --width 16 --epochs 15
    python examples/resnet_cifar10_flax.py --synthetic --steps 3 --batch-size 8
"""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dropblock_common.presets import resnet_placement  # noqa: E402
from dropblock_jax import schedules  # noqa: E402
from dropblock_jax.nnx import DropBlock  # noqa: E402
from examples import datasets, training  # noqa: E402


class Identity(nnx.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


def regulariser_factory(args, total_steps: int):
    """``stage -> (make_layer, on_skip)``: DropBlock, dropout or nothing, per the command line."""
    placement = resnet_placement(args.preset, args.block_size)

    def for_stage(stage: int, rngs: nnx.Rngs):
        if stage not in placement or args.no_dropblock:
            return (lambda: Identity()), False
        if args.dropout:
            return (lambda: nnx.Dropout(args.dropout, rngs=rngs)), placement[stage].on_skip
        p = placement[stage]
        schedule = schedules.ramp(args.drop_prob * p.rate_scale, total_steps)
        return (lambda: DropBlock(schedule, p.block_size, rngs=rngs)), p.on_skip

    return for_stage


class BasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, make_layer, on_skip: bool, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding=1, use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        self.project = stride != 1 or cin != cout
        if self.project:
            self.shortcut = nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
            self.shortcut_bn = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        self.drop1, self.drop2 = make_layer(), make_layer()
        self.drop_skip = make_layer() if on_skip else Identity()

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.drop1(nnx.relu(self.bn1(self.conv1(x))))
        y = self.drop2(self.bn2(self.conv2(y)))
        skip = self.shortcut_bn(self.shortcut(x)) if self.project else x
        return nnx.relu(y + self.drop_skip(skip))


class ResNet18(nnx.Module):
    """ResNet-18 for 32x32 inputs: a 3x3 stem, four stages of two basic blocks, a linear head."""

    def __init__(self, channels: int, classes: int, width: int, regulariser, rngs: nnx.Rngs):
        self.stem = nnx.Conv(channels, width, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.stem_bn = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
        blocks, cin = [], width
        for stage, (multiple, stride) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2)), start=1):
            make_layer, on_skip = regulariser(stage, rngs)
            for index in range(2):
                blocks.append(BasicBlock(cin, width * multiple, stride if index == 0 else 1, make_layer, on_skip, rngs))
                cin = width * multiple
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(cin, classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))


@nnx.jit
def train_step(model, optimizer, images, labels):
    def loss_fn(model):
        logits = model(images)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits.argmax(-1) == labels).mean()

    (loss, accuracy), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, accuracy


@nnx.jit
def correct(model, images, labels, valid):
    return jnp.sum((model(images).argmax(-1) == labels) & valid)


def evaluate(model, split, batch_size: int, sharding) -> float:
    model.eval()
    hits = 0
    for images, labels in datasets.batches(split.test_images, split.test_labels, batch_size, None):
        valid = np.ones(len(images), bool)
        if len(images) < batch_size:  # pad the last batch so that it splits evenly across devices
            pad = batch_size - len(images)
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
            labels, valid = (
                np.concatenate([labels, np.zeros(pad, labels.dtype)]),
                np.concatenate([valid, np.zeros(pad, bool)]),
            )
        hits += int(correct(model, *jax.device_put((images, labels, valid), sharding)))
    model.train()
    return hits / len(split.test_images)


def main(argv: list[str] | None = None) -> dict:
    args = training.arguments(__doc__.splitlines()[0], argv)
    split = datasets.load(args.dataset, args.data_dir, args.train_size, args.seed)
    devices = jax.local_devices()
    if args.batch_size % len(devices):
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {len(devices)} local devices.")
    mesh = jax.make_mesh((len(devices),), ("data",), devices=devices)
    data_sharding, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

    steps_per_epoch = len(split.train_images) // args.batch_size
    total_steps = (
        steps_per_epoch * args.epochs if args.steps is None else min(args.steps, steps_per_epoch * args.epochs)
    )
    rngs = nnx.Rngs(params=args.seed, dropout=args.seed + 1)
    model = ResNet18(split.channels, split.classes, args.width, regulariser_factory(args, total_steps), rngs)
    nnx.update(model, jax.device_put(nnx.state(model), replicated))
    learning_rate = optax.cosine_decay_schedule(args.lr, max(total_steps, 1))
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(learning_rate, momentum=0.9, nesterov=True))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    rng, history, step = np.random.default_rng(args.seed), [], 0
    for epoch in range(1, args.epochs + 1):
        losses, accuracies = [], []
        progress = tqdm(
            datasets.batches(split.train_images, split.train_labels, args.batch_size, rng),
            total=steps_per_epoch,
            desc=f"epoch {epoch}",
            disable=args.quiet,
            leave=False,
        )
        for images, labels in progress:
            loss, accuracy = train_step(model, optimizer, *jax.device_put((images, labels), data_sharding))
            losses.append(float(loss))
            accuracies.append(float(accuracy))
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
            step += 1
            if step >= total_steps:
                break
        history.append(
            training.epoch_entry(
                epoch, step, losses, accuracies, evaluate(model, split, args.batch_size, data_sharding)
            )
        )
        if not args.quiet:
            print(training.epoch_line(history[-1]))
        if step >= total_steps:
            break
    return training.save(args.out, args, history, "flax")


if __name__ == "__main__":
    main()
