"""What DropBlock costs a training step: ``python -m benchmarks.training_step``.

A ResNet-18 training step (forward, backward, SGD with momentum) with DropBlock where the paper
puts it (stages 3 and 4, after every conv-BN and on the skip connections;
``dropblock_common.presets``), against the same step without it, in one run: the torch twin
eager and under ``torch.compile``, timm's and torchvision's ``DropBlock2d`` at the same places
(those that are installed), and the JAX twin under ``nnx.jit``. The model is the examples'
ResNet-18 (``examples/resnet_cifar10_*.py``: a 3x3 stem, four stages of two basic blocks),
``drop_prob`` the paper's final 0.1, fixed, so that every step pays the full cost.

Timing is interleaved, as in ``benchmarks.bench``: each repeat runs one step of every variant in
turn, so a burst of noise hits them alike. The overhead is ``step / baseline - 1`` against the
variant without DropBlock in the same framework and mode.
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
    framework: str
    mode: str  # "eager", "compiled", "jit"
    name: str
    step: Callable[[], object]
    baseline: str | None = None


def torch_variants(args) -> list[Variant]:
    import torch
    from torch import nn

    import dropblock_torch as dt
    from dropblock_common.presets import resnet_placement
    from examples.resnet_cifar10_torch import ResNet18

    placement = resnet_placement("paper")
    layers: dict[str, Callable[[float, int], nn.Module]] = {
        "dropblock_torch DropBlock2d": lambda p, k: dt.DropBlock2d(p, k),
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

    def regulariser(make: Callable[[float, int], nn.Module] | None):
        def for_stage(stage: int):
            if make is None or stage not in placement:
                return nn.Identity, False
            where = placement[stage]
            return (lambda: make(DROP_PROB * where.rate_scale, where.block_size)), where.on_skip

        return for_stage

    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    # A GPU step is queued; the timing waits for it.
    finish = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def training_step(make, compiled: bool) -> Callable[[], object]:
        torch.manual_seed(0)
        model = ResNet18(3, 10, args.width, regulariser(make)).to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        forward = torch.compile(model) if compiled else model

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(forward(images), labels)
            loss.backward()
            optimizer.step()
            finish()
            return loss

        return step

    variants = []
    for mode in ("eager", "compiled") if args.compile else ("eager",):
        compiled = mode == "compiled"
        baseline = "no DropBlock"
        variants.append(Variant("torch", mode, baseline, training_step(None, compiled)))
        for name, make in layers.items():
            variants.append(Variant("torch", mode, name, training_step(make, compiled), baseline))
    return variants


def jax_variants(args) -> list[Variant]:
    import jax
    import optax
    from flax import nnx

    from dropblock_common.presets import resnet_placement
    from dropblock_jax.nnx import DropBlock
    from examples.resnet_cifar10_flax import Identity, ResNet18, train_step

    placement = resnet_placement("paper")

    def regulariser(with_dropblock: bool):
        def for_stage(stage: int, rngs: nnx.Rngs):
            if not with_dropblock or stage not in placement:
                return (lambda: Identity()), False
            where = placement[stage]
            return (lambda: DropBlock(DROP_PROB * where.rate_scale, where.block_size, rngs=rngs)), where.on_skip

        return for_stage

    device = jax.devices("gpu" if args.device == "gpu" else "cpu")[0]
    images = jax.device_put(
        jax.random.normal(jax.random.key(0), (args.batch_size, args.image_size, args.image_size, 3)), device
    )
    labels = jax.device_put(jax.random.randint(jax.random.key(1), (args.batch_size,), 0, 10), device)

    def training_step(with_dropblock: bool) -> Callable[[], object]:
        with jax.default_device(device):
            model = ResNet18(3, 10, args.width, regulariser(with_dropblock), rngs=nnx.Rngs(0, dropblock=1))
            optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
        return lambda: jax.block_until_ready(train_step(model, optimizer, images, labels))

    return [
        Variant("jax", "jit", "no DropBlock", training_step(False)),
        Variant("jax", "jit", "dropblock_jax nnx.DropBlock", training_step(True), "no DropBlock"),
    ]


def interleaved_medians(variants: list[Variant], repeats: int) -> list[float]:
    """Median seconds of each variant's step, one step of each in turn per repeat (after 2 warm-up rounds)."""
    times: list[list[float]] = [[] for _ in variants]
    for round_ in range(2 + repeats):
        for variant, spent in zip(variants, times, strict=True):
            start = time.perf_counter()
            variant.step()
            if round_ >= 2:
                spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def table(variants: list[Variant], medians: list[float]) -> str:
    baseline = {(v.framework, v.mode): m for v, m in zip(variants, medians, strict=True) if v.baseline is None}
    lines = ["| framework | mode | DropBlock | step ms | overhead |", "|---|---|---|---|---|"]
    for variant, median in zip(variants, medians, strict=True):
        base = baseline[(variant.framework, variant.mode)]
        overhead = "" if variant.baseline is None else f"{median / base - 1:+.1%}"
        lines.append(f"| {variant.framework} | {variant.mode} | {variant.name} | {1e3 * median:.1f} | {overhead} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64, help="input side (stages 3 and 4 see 1/4 and 1/8)")
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage (ResNet-18: 64)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager torch only")
    parser.add_argument("--frameworks", default="torch,jax", help="comma-separated: torch, jax")
    args = parser.parse_args(argv)
    frameworks = set(args.frameworks.split(","))
    variants = (torch_variants(args) if "torch" in frameworks else []) + (
        jax_variants(args) if "jax" in frameworks else []
    )
    medians = interleaved_medians(variants, args.repeats)
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
    print(table(variants, medians))


if __name__ == "__main__":
    relaunch_with_steady_allocator("benchmarks.training_step", sys.argv[1:])
    main()
