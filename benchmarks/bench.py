"""Speed of DropBlock against baselines and peers, measured in one run: ``python -m benchmarks.bench``.

For each ResNet-like shape: forward and forward+backward time (median over repeats) of
``dropblock_jax`` (jit, NHWC) and ``dropblock_torch`` (NCHW), per-channel and shared-channel,
next to the memory-bandwidth floor (a plain ``x * s``), each framework's own dropout, and the
peers that are installed (timm's ``drop_block_2d``, torchvision's ``drop_block2d``, the
``dropblock`` 0.3.0 package). Ratios are pair by pair, within one framework and one run. JAX
rows also give the compiled program's temporary memory. Prints a markdown table.

timm is loaded from its ``layers/drop.py`` alone (``pip install --no-deps timm``), since the
rest of timm imports torchvision, which does not import beside the CPU build of torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import pathlib
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import torch

import dropblock_jax as dj
import dropblock_torch as dt

DROP_PROB = 0.1


@dataclasses.dataclass(frozen=True)
class Case:
    shape: tuple[int, ...]  # NCHW / NCDHW
    block_size: int

    @property
    def name(self) -> str:
        return f"{self.shape} k={self.block_size}"


CASES = [
    Case((32, 256, 28, 28), 7),
    Case((64, 512, 14, 14), 5),
    Case((16, 64, 56, 56), 7),
    Case((8, 64, 16, 16, 16), 3),
]


@dataclasses.dataclass
class Row:
    case: str
    framework: str
    name: str
    forward_ms: float | None
    backward_ms: float | None = None
    baseline: str | None = None
    temp_mb: float | None = None
    ratio: float | None = None
    backward_ratio: float | None = None


def median_ms(run: Callable[[], object], repeats: int, sync: Callable[[object], object]) -> float:
    for _ in range(3):
        sync(run())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(run())
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _timm_drop_block_2d():
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "layers" / "drop.py"
    module_spec = importlib.util.spec_from_file_location("timm_layers_drop", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.drop_block_2d


def _torchvision_drop_block():
    try:
        from torchvision.ops import drop_block2d, drop_block3d
    except Exception:  # torchvision from PyPI does not import beside the CPU build of torch
        return None
    return drop_block2d, drop_block3d


def jax_rows(case: Case, repeats: int, device: jax.Device) -> list[Row]:
    with jax.default_device(device):
        x = jax.random.normal(jax.random.key(0), (case.shape[0], *case.shape[2:], case.shape[1]))
        key = jax.random.key(1)
        weights = jax.random.uniform(jax.random.key(2), x.shape)
        functions = {
            "x * s (floor)": lambda x, key: x * 1.1,
            "jax dropout": lambda x, key: jnp.where(
                jax.random.bernoulli(key, 1 - DROP_PROB, x.shape), x / (1 - DROP_PROB), 0
            ),
            "dropblock_jax per-channel": lambda x, key: dj.dropblock(x, key, DROP_PROB, case.block_size),
            "dropblock_jax shared-channel": lambda x, key: dj.dropblock(
                x, key, DROP_PROB, case.block_size, share_channels=True
            ),
        }
        rows = []
        for name, function in functions.items():
            forward = jax.jit(function)
            # Weighted, so that XLA cannot fold the gradient of a plain sum into a constant.
            backward = jax.jit(jax.grad(lambda x, key, f=function: jnp.sum(f(x, key) * weights)))
            memory = forward.lower(x, key).compile().memory_analysis()
            temp = getattr(memory, "temp_size_in_bytes", None)
            rows.append(
                Row(
                    case.name,
                    "jax",
                    name,
                    median_ms(lambda f=forward: f(x, key), repeats, jax.block_until_ready),
                    median_ms(lambda f=backward: f(x, key), repeats, jax.block_until_ready),
                    temp_mb=None if temp is None else temp / 2**20,
                )
            )
    return rows


def torch_rows(case: Case, repeats: int, device: torch.device) -> list[Row]:
    x = torch.randn(case.shape, device=device)
    dims = len(case.shape) - 2
    sync = (lambda _: torch.cuda.synchronize()) if device.type == "cuda" else (lambda _: None)
    functions = {
        "x * s (floor)": lambda x: x * 1.1,
        "F.dropout": lambda x: torch.nn.functional.dropout(x, DROP_PROB),
        "dropblock_torch per-channel": lambda x: dt.drop_block(x, DROP_PROB, case.block_size),
        "dropblock_torch shared-channel (full)": lambda x: dt.drop_block(
            x, DROP_PROB, case.block_size, share_channels=True, seed_region="full"
        ),
    }
    timm = _timm_drop_block_2d()
    if timm is not None and dims == 2:
        functions["timm drop_block_2d (shared)"] = lambda x: timm(x, DROP_PROB, case.block_size)
        functions["timm drop_block_2d couple_channels=False"] = lambda x: timm(
            x, DROP_PROB, case.block_size, couple_channels=False
        )
    torchvision = _torchvision_drop_block()
    if torchvision is not None:
        functions["torchvision drop_block"] = lambda x: torchvision[dims - 2](x, DROP_PROB, case.block_size)
    import dropblock

    old = (dropblock.DropBlock2D if dims == 2 else dropblock.DropBlock3D)(DROP_PROB, case.block_size)
    functions["dropblock 0.3.0"] = old
    rows = []
    leaf, gradient = x.clone().requires_grad_(), torch.rand_like(x)
    for name, function in functions.items():
        forward_ms = median_ms(lambda f=function: f(x), repeats, sync)
        backward_ms = median_ms(lambda f=function: f(leaf).backward(gradient), repeats, sync)
        rows.append(Row(case.name, "torch", name, forward_ms, backward_ms))
    return rows


PAIRS = {
    # row: the baseline it is compared with, in the same framework and run
    "jax dropout": "x * s (floor)",
    "dropblock_jax per-channel": "jax dropout",
    "dropblock_jax shared-channel": "x * s (floor)",
    "F.dropout": "x * s (floor)",
    "dropblock_torch per-channel": "F.dropout",
    "dropblock_torch shared-channel (full)": "timm drop_block_2d (shared)",
    "timm drop_block_2d couple_channels=False": "F.dropout",
    "torchvision drop_block": "F.dropout",
    "dropblock 0.3.0": "F.dropout",
}


def with_ratios(rows: list[Row]) -> list[Row]:
    by_name = {(r.case, r.framework, r.name): r for r in rows}
    for row in rows:
        baseline = PAIRS.get(row.name)
        reference = by_name.get((row.case, row.framework, baseline))
        if reference is None and row.framework == "torch" and baseline and baseline.startswith("timm"):
            baseline, reference = "x * s (floor)", by_name.get((row.case, row.framework, "x * s (floor)"))
        if reference is not None:
            row.baseline = baseline
            row.ratio = row.forward_ms / reference.forward_ms
            row.backward_ratio = row.backward_ms / reference.backward_ms
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| shape | framework | implementation | forward ms | vs | ratio | fwd+bwd ms | ratio | temp MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        lines.append(
            f"| {r.case} | {r.framework} | {r.name} | {fmt(r.forward_ms, '.2f')} | {r.baseline or ''} | "
            f"{fmt(r.ratio, '.2f')} | {fmt(r.backward_ms, '.2f')} | {fmt(r.backward_ratio, '.2f')} | "
            f"{fmt(r.temp_mb, '.1f')} |"
        )
    return "\n".join(lines)


TARGETS = [
    ("dropblock_jax per-channel", 0.3, "<= 0.3x jax dropout"),
    ("dropblock_jax shared-channel", 1.5, "<= 1.5x jitted x * s"),
    ("dropblock_torch per-channel", 0.5, "<= 0.5x F.dropout"),
    ("dropblock_torch shared-channel (full)", 1.0, "<= 1.0x timm drop_block_2d"),
]


def targets(rows: list[Row], case: Case) -> str:
    lines = [f"Targets on {case.name} (forward; forward+backward within 1.2x of the same ratio):", ""]
    for name, bound, text in TARGETS:
        row = next((r for r in rows if r.case == case.name and r.name == name), None)
        if row is None or row.ratio is None:
            lines.append(f"- {name}: {text}: not measured (baseline missing)")
            continue
        met = row.ratio <= bound and row.backward_ratio <= 1.2 * bound
        lines.append(
            f"- {name}: {text}: forward {row.ratio:.2f}x, fwd+bwd {row.backward_ratio:.2f}x vs {row.baseline} "
            f"-> {'met' if met else 'NOT met'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cases", type=int, default=len(CASES), help="run the first N shapes")
    args = parser.parse_args(argv)
    jax_device = jax.devices("gpu" if args.device == "gpu" else "cpu")[0]
    torch_device = torch.device("cuda" if args.device == "gpu" else "cpu")
    rows = []
    for case in CASES[: args.cases]:
        rows += jax_rows(case, args.repeats, jax_device) + torch_rows(case, args.repeats, torch_device)
    rows = with_ratios(rows)
    cpu = f"{torch.get_num_threads()} torch threads" if args.device == "cpu" else torch.cuda.get_device_name()
    print(
        f"DropBlock benchmark: {args.device} ({cpu}), jax {jax.__version__}, torch {torch.__version__}, "
        f"drop_prob {DROP_PROB}, median of {args.repeats} repeats\n"
    )
    print(table(rows))
    print()
    print(targets(rows, CASES[0]))


if __name__ == "__main__":
    main()
