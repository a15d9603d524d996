"""What DropBlock costs a training step: ``python -m benchmarks.training_step``.

A ResNet-18 training step (forward, backward, SGD with momentum) with DropBlock where the paper
puts it (stages 3 and 4, after every conv-BN and on the skip connections;
``dropblock_common.presets``), against the same step with those layers switched off, in one
run: the torch twin eager and under ``torch.compile``, timm's and torchvision's
``DropBlock2d`` at the same places (those that are installed), and the JAX twin under
``nnx.jit``. The model is the examples' ResNet-18 (``examples/resnet_cifar10_*.py``: a 3x3 stem,
four stages of two basic blocks), ``drop_prob`` the paper's final 0.1, fixed, so that every step
pays the full cost.

Each DropBlock is measured against itself switched off (its layers in eval mode, which returns
the input): the same model, weights and optimizer, so no difference between two model instances
(where their memory lies, which kernels they happened to get) is counted as DropBlock's. Timing
is interleaved: every repeat runs one step of every variant on and off in turn, so a burst of
noise hits them alike, and the overhead is the median over repeats of ``on / off - 1``, each
ratio taken within one repeat.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import sys
import time
from collections.abc import Callable

from benchmarks.bench import load_timm_drop_module, relaunch_with_steady_allocator

DROP_PROB = 0.1


@dataclasses.dataclass
class Variant:
    """One DropBlock in one framework and mode; ``step(on)`` trains one step with it on or off."""

    framework: str
    mode: str  # "eager", "compiled", "jit"
    name: str
    step: Callable[[bool], object]


def torch_variants(args) -> list[Variant]:
    import torch
    from torch import nn

    import dropblock_torch as dt
    from dropblock_common.presets import resnet_placement
    from examples.resnet_cifar10_torch import ResNet18

    placement = resnet_placement("paper")
    layers: dict[str, Callable[[float, int], nn.Module]] = {
        "dropblock_torch DropBlock2d": lambda p, k: dt.DropBlock2d(p, k),
        # timm's default: one mask for all channels.
        "dropblock_torch DropBlock2d (shared)": lambda p, k: dt.DropBlock2d(p, k, share_channels=True),
    }
    timm = load_timm_drop_module()
    if timm is not None:
        layers["timm DropBlock2d"] = lambda p, k: timm.DropBlock2d(p, k)
    try:
        from torchvision.ops import DropBlock2d as TorchvisionDropBlock2d
    except Exception:  # torchvision from PyPI does not import beside the CPU build of torch
        TorchvisionDropBlock2d = None
    if TorchvisionDropBlock2d is not None:
        layers["torchvision DropBlock2d"] = lambda p, k: TorchvisionDropBlock2d(p, k)

    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    # A GPU step is queued; the timing waits for it.
    finish = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def training_step(make: Callable[[float, int], nn.Module], compiled: bool) -> Callable[[bool], object]:
        inserted: list[nn.Module] = []

        def for_stage(stage: int):
            if stage not in placement:
                return nn.Identity, False
            where = placement[stage]

            def layer():
                inserted.append(make(DROP_PROB * where.rate_scale, where.block_size))
                return inserted[-1]

            return layer, where.on_skip

        torch.manual_seed(0)
        model = ResNet18(3, 10, args.width, for_stage).to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        forward = torch.compile(model) if compiled else model

        def step(on: bool):
            for layer in inserted:
                layer.train(on)  # off: eval mode, where every DropBlock returns its input
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(forward(images), labels)
            loss.backward()
            optimizer.step()
            finish()
            return loss

        return step

    modes = [mode for mode in args.modes.split(",") if args.compile or mode != "compiled"]
    return [
        Variant("torch", mode, name, training_step(make, mode == "compiled"))
        for mode in modes
        for name, make in layers.items()
    ]


def jax_variants(args) -> list[Variant]:
    import jax
    import optax
    from flax import nnx

    from dropblock_common.presets import resnet_placement
    from dropblock_jax.nnx import DropBlock
    from examples.resnet_cifar10_flax import Identity, ResNet18, train_step

    placement = resnet_placement("paper")
    inserted: list[DropBlock] = []

    def for_stage(stage: int, rngs: nnx.Rngs):
        if stage not in placement:
            return (lambda: Identity()), False
        where = placement[stage]

        def layer():
            inserted.append(DropBlock(DROP_PROB * where.rate_scale, where.block_size, rngs=rngs))
            return inserted[-1]

        return layer, where.on_skip

    device = jax.devices("gpu" if args.device == "gpu" else "cpu")[0]
    images = jax.device_put(
        jax.random.normal(jax.random.key(0), (args.batch_size, args.image_size, args.image_size, 3)), device
    )
    labels = jax.device_put(jax.random.randint(jax.random.key(1), (args.batch_size,), 0, 10), device)
    with jax.default_device(device):
        model = ResNet18(3, 10, args.width, for_stage, rngs=nnx.Rngs(0, dropblock=1))
        optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)

    def step(on: bool):
        for layer in inserted:
            layer.deterministic = not on  # a static attribute: nnx.jit keeps one program for each
        return jax.block_until_ready(train_step(model, optimizer, images, labels))

    return [Variant("jax", "jit", "dropblock_jax nnx.DropBlock", step)]


@dataclasses.dataclass
class Timing:
    """Seconds per step of one variant, with DropBlock on and off, one pair per repeat."""

    on: list[float]
    off: list[float]

    @property
    def overhead(self) -> float:
        """The median over repeats of ``on / off - 1``."""
        return statistics.median(on / off - 1 for on, off in zip(self.on, self.off, strict=True))


def interleaved_timings(variants: list[Variant], repeats: int, warmup: int = 2) -> list[Timing]:
    """Each variant's step on and off, one step of each in turn per repeat (after ``warmup`` rounds)."""
    timings = [Timing([], []) for _ in variants]
    for round_ in range(warmup + repeats):
        for variant, timing in zip(variants, timings, strict=True):
            # Alternate which goes first, so neither always follows another variant's step.
            for on in (True, False) if round_ % 2 else (False, True):
                start = time.perf_counter()
                variant.step(on)
                if round_ >= warmup:
                    (timing.on if on else timing.off).append(time.perf_counter() - start)
    return timings


def table(variants: list[Variant], timings: list[Timing]) -> str:
    lines = ["| framework | mode | DropBlock | step ms, off | step ms, on | overhead |", "|---|---|---|---|---|---|"]
    for variant, timing in zip(variants, timings, strict=True):
        off, on = (1e3 * statistics.median(values) for values in (timing.off, timing.on))
        lines.append(
            f"| {variant.framework} | {variant.mode} | {variant.name} | {off:.1f} | {on:.1f} | {timing.overhead:+.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64, help="input side (stages 3 and 4 see 1/4 and 1/8)")
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage (ResNet-18: 64)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--modes", default="eager,compiled", help="torch's modes, comma-separated: eager, compiled")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager torch only")
    parser.add_argument("--frameworks", default="torch,jax", help="comma-separated: torch, jax")
    args = parser.parse_args(argv)
    frameworks = set(args.frameworks.split(","))
    if not set(args.modes.split(",")) <= {"eager", "compiled"}:
        parser.error(f"--modes takes eager and compiled, got --modes={args.modes!r}.")
    variants = (torch_variants(args) if "torch" in frameworks else []) + (
        jax_variants(args) if "jax" in frameworks else []
    )
    timings = interleaved_timings(variants, args.repeats)
    versions = functools.reduce(
        lambda text, name: text + f", {name} {sys.modules[name].__version__}" if name in sys.modules else text,
        ("torch", "jax", "flax"),
        "",
    )
    print(
        f"ResNet-18 training step on the {args.device}: batch {args.batch_size}, "
        f"{args.image_size}x{args.image_size} inputs, width {args.width}, drop_prob {DROP_PROB}, "
        f"median of {args.repeats}{versions}\n"
    )
    print(table(variants, timings))


if __name__ == "__main__":
    relaunch_with_steady_allocator("benchmarks.training_step", sys.argv[1:])
    main()
