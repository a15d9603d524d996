"""Speed of DropBlock against baselines and peers, measured in one run: ``python -m benchmarks.bench``.

For each ResNet-like shape: forward and forward+backward time (median over repeats) of
``dropblock_jax`` (jit, NHWC) and ``dropblock_torch`` (NCHW), per-channel and shared-channel,
next to the memory-bandwidth floor (a plain ``x * s``), each framework's own dropout, and the
peers that are installed (timm's ``drop_block_2d``, torchvision's ``drop_block2d``, the
``dropblock`` 0.3.0 package), each beside its drop-in from ``dropblock_torch.compat``. Ratios are
pair by pair, within one framework and one run.

Timing is interleaved: each repeat runs every implementation of a shape once, in turn, so a
burst of noise on a busy machine hits all of them alike rather than one row; on the CPU the
last-level cache is flushed before each timed call, so every call starts equally cold, and the
process runs with glibc's malloc told to keep freed memory (see ``ALLOCATOR_ENV``).

Peak memory is what one call allocates beyond its input (JAX: the compiled program's temporary
and output buffers; torch: the allocator's running peak during the call,
from the profiler on the CPU and ``max_memory_allocated`` on a GPU). ``GB/s`` is the forward's
bytes read plus written (``2 * x.nbytes``) over its time, to compare with the floor's. Prints a
markdown table and the speed targets.

timm is loaded from its ``layers/drop.py`` alone (``pip install --no-deps timm``), since the
rest of timm imports torchvision, which does not import beside the CPU build of torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import math
import os
import pathlib
import random
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

import dropblock_jax as dj
import dropblock_torch as dt
from dropblock_torch import compat

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
    peak_mb: float | None = None
    backward_peak_mb: float | None = None
    gb_per_s: float | None = None
    baseline: str | None = None
    ratio: float | None = None
    backward_ratio: float | None = None


# glibc's malloc hands freed blocks above its mmap threshold back to the kernel, so the next call
# faults the pages of a same-sized output in again (about 1 us per 4 KiB page: 6 ms for a 25 MB
# output, three times the multiply itself). Which calls pay depends on the order of allocations,
# so it ranks implementations by chance; with these settings freed memory stays in the heap.
ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(4 << 30),
    "MALLOC_TOP_PAD_": str(256 << 20),
}


@functools.cache
def _cache_flush_buffer() -> np.ndarray:
    # 64 MB: enough to flush what a call sees of the caches on the CPUs measured (after it, a
    # product over a 25 MB tensor takes twice its warm time on the 2-core Xeon, whose lscpu
    # reports the whole host's 480 MiB L3).
    return np.zeros(16 << 20, np.float32)


# Idle time after the flush, so that every timed call starts from the same state: without it,
# two identical rows of the same run read 2.7 and 4.1 ms on a 2-core Xeon, and a row timed right
# after a much longer one (a 180 ms call) came out about 0.7 ms slower; with it they agree within 3%.
SETTLE_SECONDS = 0.005


def evict_caches() -> None:
    """Write 64 MB, pushing the previous call's data out of the CPU caches, then let the machine settle."""
    buffer = _cache_flush_buffer()
    np.add(buffer, 1.0, out=buffer)
    time.sleep(SETTLE_SECONDS)


def interleaved_medians(
    runs: dict[str, Callable[[], object]],
    repeats: int,
    sync: Callable[[object], object],
    before_each: Callable[[], None] | None = None,
    calls: int = 1,
) -> dict[str, float]:
    """Median milliseconds of each run, timed in turn within every repeat (after 3 warm-up rounds).

    Each round times the runs in another order (shuffled with a fixed seed, so the same in every
    benchmark), so that whatever one run leaves behind is not charged to the same next run every
    time (``evict_caches`` also waits for the machine to settle). Each timing covers ``calls``
    calls in a row, then one ``sync``: on a GPU, where a call is queued and the host only waits
    at the end, this keeps the wait out of the per-call time.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    shuffler = random.Random(0)
    for round_ in range(3 + repeats):
        shuffler.shuffle(order)
        for name in order:
            run = runs[name]
            if before_each is not None:
                before_each()
            start = time.perf_counter()
            for _ in range(calls - 1):
                run()
            sync(run())
            if round_ >= 3:
                times[name].append((time.perf_counter() - start) / calls)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


# Calls per timing on a GPU (see ``interleaved_medians``).
GPU_CALLS_PER_TIMING = 10


def timing_settings(on_cpu: bool) -> tuple[Callable[[], None] | None, int]:
    """``interleaved_medians``' ``before_each`` and ``calls``: flush caches, one call (CPU); else batches of calls."""
    return (evict_caches, 1) if on_cpu else (None, GPU_CALLS_PER_TIMING)


def torch_peak_mb(run: Callable[[], object], device: torch.device) -> float:
    """The most memory one call holds at once beyond what existed before it, in MB."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = run()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del result
        return peak / 2**20
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        result = run()
    del result
    # Every allocation (+bytes) and free (-bytes) in time order; the running total's maximum is
    # the peak. (The raw records: the aggregated events fold allocations into their ops.)
    records = sorted(
        (record.start_ns(), record.nbytes())
        for record in profile.profiler.kineto_results.events()
        if record.name() == "[memory]"
    )
    running = peak = 0
    for _, change in records:
        running += change
        peak = max(peak, running)
    return peak / 2**20


def jax_peak_mb(compiled: jax.stages.Compiled) -> float | None:
    memory = compiled.memory_analysis()
    if memory is None:
        return None
    return (memory.temp_size_in_bytes + memory.output_size_in_bytes) / 2**20


def load_timm_drop_module():
    """timm's ``layers/drop.py`` as a module of its own (the rest of timm needs torchvision), or None."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "layers" / "drop.py"
    module_spec = importlib.util.spec_from_file_location("timm_layers_drop", path)
    module = importlib.util.module_from_spec(module_spec)
    # Registered, as an import would: dynamo imports a traced function's module by its name.
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    return module


def _torchvision_drop_block():
    try:
        from torchvision.ops import drop_block2d, drop_block3d
    except Exception:  # torchvision from PyPI does not import beside the CPU build of torch
        return None
    return drop_block2d, drop_block3d


def jax_rows(case: Case, repeats: int, device: jax.Device) -> list[Row]:
    sync = jax.block_until_ready
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
        # Compiled once, ahead of time: the same executables are timed and give their memory.
        forwards = {name: jax.jit(function).lower(x, key).compile() for name, function in functions.items()}
        # Weighted, so that XLA cannot fold the gradient of a plain sum into a constant.
        backwards = {
            name: jax.jit(jax.grad(lambda x, key, f=function: jnp.sum(f(x, key) * weights))).lower(x, key).compile()
            for name, function in functions.items()
        }
        flush, calls = timing_settings(device.platform == "cpu")
        forward_ms, backward_ms = (
            interleaved_medians({n: (lambda f=f: f(x, key)) for n, f in jitted.items()}, repeats, sync, flush, calls)
            for jitted in (forwards, backwards)
        )
    return [
        Row(
            case.name,
            "jax",
            name,
            forward_ms[name],
            backward_ms[name],
            peak_mb=jax_peak_mb(forwards[name]),
            backward_peak_mb=jax_peak_mb(backwards[name]),
            gb_per_s=2 * x.nbytes / forward_ms[name] / 1e6,
        )
        for name in functions
    ]


def compiled_torch_functions(case: Case) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The floor, dropout and both DropBlock layers under ``torch.compile(fullgraph=True)``, as training runs them."""
    # Every shape compiles afresh: the layers of all shapes share one forward, and would pass
    # dynamo's recompile limit (8 per code object) over the whole run.
    torch.compiler.reset()
    layer = (dt.DropBlock1d, dt.DropBlock2d, dt.DropBlock3d)[len(case.shape) - 3]
    modules = {
        "x * s (floor, compiled)": lambda x: x * 1.1,
        "F.dropout (compiled)": torch.nn.Dropout(DROP_PROB),
        "dropblock_torch per-channel (compiled)": layer(DROP_PROB, case.block_size),
        "dropblock_torch shared-channel (full, compiled)": layer(
            DROP_PROB, case.block_size, share_channels=True, seed_region="full"
        ),
    }
    return {name: torch.compile(module, fullgraph=True) for name, module in modules.items()}


def torch_rows(case: Case, repeats: int, device: torch.device, compiled: bool = True) -> list[Row]:
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
    if compiled:
        functions |= compiled_torch_functions(case)
    timm_module = load_timm_drop_module()
    timm = None if timm_module is None else timm_module.drop_block_2d
    if timm is not None and dims == 2:
        functions["timm drop_block_2d (shared)"] = lambda x: timm(x, DROP_PROB, case.block_size)
        functions["timm drop_block_2d couple_channels=False"] = lambda x: timm(
            x, DROP_PROB, case.block_size, couple_channels=False
        )
    if dims == 2:
        functions["compat.timm drop_block_2d (shared)"] = lambda x: compat.timm.drop_block_2d(
            x, DROP_PROB, case.block_size
        )
        functions["compat.timm drop_block_2d couple_channels=False"] = lambda x: compat.timm.drop_block_2d(
            x, DROP_PROB, case.block_size, couple_channels=False
        )
    torchvision = _torchvision_drop_block()
    if torchvision is not None:
        functions["torchvision drop_block"] = lambda x: torchvision[dims - 2](x, DROP_PROB, case.block_size)
    drop_in = (compat.torchvision.drop_block2d, compat.torchvision.drop_block3d)[dims - 2]
    functions["compat.torchvision drop_block"] = lambda x: drop_in(x, DROP_PROB, case.block_size)
    if importlib.util.find_spec("dropblock") is not None:
        import dropblock

        old = (dropblock.DropBlock2D if dims == 2 else dropblock.DropBlock3D)(DROP_PROB, case.block_size)
        functions["dropblock 0.3.0"] = old
    leaf, gradient = x.clone().requires_grad_(), torch.rand_like(x)
    forwards = {name: (lambda f=function: f(x)) for name, function in functions.items()}
    backwards = {name: (lambda f=function: f(leaf).backward(gradient)) for name, function in functions.items()}
    flush, calls = timing_settings(device.type == "cpu")
    forward_ms = interleaved_medians(forwards, repeats, sync, flush, calls)
    backward_ms = interleaved_medians(backwards, repeats, sync, flush, calls)
    return [
        Row(
            case.name,
            "torch",
            name,
            forward_ms[name],
            backward_ms[name],
            peak_mb=torch_peak_mb(forwards[name], device),
            backward_peak_mb=torch_peak_mb(backwards[name], device),
            gb_per_s=2 * x.nbytes / forward_ms[name] / 1e6,
        )
        for name in functions
    ]


PAIRS = {
    # row: the baseline it is compared with, in the same framework, mode and run
    "jax dropout": "x * s (floor)",
    "dropblock_jax per-channel": "x * s (floor)",
    "dropblock_jax shared-channel": "x * s (floor)",
    "F.dropout": "x * s (floor)",
    "dropblock_torch per-channel": "x * s (floor)",
    "dropblock_torch shared-channel (full)": "x * s (floor)",
    "F.dropout (compiled)": "x * s (floor, compiled)",
    "dropblock_torch per-channel (compiled)": "x * s (floor, compiled)",
    "dropblock_torch shared-channel (full, compiled)": "x * s (floor, compiled)",
    "timm drop_block_2d (shared)": "x * s (floor)",
    "timm drop_block_2d couple_channels=False": "x * s (floor)",
    "torchvision drop_block": "x * s (floor)",
    "dropblock 0.3.0": "x * s (floor)",
    # each drop-in against the peer it replaces
    "compat.timm drop_block_2d (shared)": "timm drop_block_2d (shared)",
    "compat.timm drop_block_2d couple_channels=False": "timm drop_block_2d couple_channels=False",
    "compat.torchvision drop_block": "torchvision drop_block",
}


def with_ratios(rows: list[Row]) -> list[Row]:
    by_name = {(r.case, r.framework, r.name): r for r in rows}
    for row in rows:
        baseline = PAIRS.get(row.name)
        reference = by_name.get((row.case, row.framework, baseline))
        if reference is not None:
            row.baseline = baseline
            row.ratio = row.forward_ms / reference.forward_ms
            row.backward_ratio = row.backward_ms / reference.backward_ms
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| shape | framework | implementation | forward ms | vs | ratio | fwd+bwd ms | ratio "
        "| peak MB fwd / fwd+bwd | GB/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        lines.append(
            f"| {r.case} | {r.framework} | {r.name} | {fmt(r.forward_ms, '.2f')} | {r.baseline or ''} | "
            f"{fmt(r.ratio, '.2f')} | {fmt(r.backward_ms, '.2f')} | {fmt(r.backward_ratio, '.2f')} | "
            f"{fmt(r.peak_mb, '.1f')} / {fmt(r.backward_peak_mb, '.1f')} | {fmt(r.gb_per_s, '.0f')} |"
        )
    return "\n".join(lines)


# (row, bound on its forward and its forward+backward ratio to its baseline, the GPU's share of
# the floor's bandwidth it must reach)
TARGETS = [
    ("dropblock_jax per-channel", 1.2, 0.7),
    ("dropblock_jax shared-channel", 1.15, 0.8),
    ("dropblock_torch per-channel", 4.0, 0.7),
    ("dropblock_torch shared-channel (full)", 1.5, 0.8),
    ("dropblock_torch per-channel (compiled)", 1.5, 0.7),
    ("dropblock_torch shared-channel (full, compiled)", 1.5, 0.8),
]
# Each row's dropout, for peak memory: the same framework and mode.
DROPOUT = {"jax": "jax dropout", "torch": "F.dropout", "torch compiled": "F.dropout (compiled)"}
# Peak memory may exceed dropout's by a few scalars (a saved scale is 4 bytes) and by a mask of
# one bit per unit (compiled dropout keeps no mask: it draws it again for the backward pass).
SCALAR_SLACK_MB = 64 / 1024


def memory_slack_mb(case: Case) -> float:
    """What a DropBlock may hold beyond dropout: a few scalars and one bit per unit of ``x``."""
    return SCALAR_SLACK_MB + math.prod(case.shape) / 8 / 2**20


FLOOR = {"jax": "x * s (floor)", "torch": "x * s (floor)", "torch compiled": "x * s (floor, compiled)"}


def _mode(row: Row) -> str:
    return f"{row.framework} compiled" if row.name.endswith("compiled)") else row.framework


def targets(rows: list[Row], case: Case, gpu: bool = False) -> str:
    """Each target on ``case``: the forward and the forward+backward ratio to the row's baseline,
    peak memory no more than dropout's in the same framework and mode, and on a GPU the share of
    the floor's (copy) bandwidth."""
    lines = [
        f"Targets on {case.name} (forward and forward+backward ratio to the baseline; peak memory no more "
        f"than dropout's plus one bit per unit and 64 KiB{'; GPU bandwidth vs the floor' if gpu else ''}):",
        "",
    ]
    # Keyed by framework too: both frameworks have a row named "x * s (floor)".
    by_name = {(r.framework, r.name): r for r in rows if r.case == case.name}
    for name, bound, bandwidth in TARGETS:
        row = by_name.get(("jax" if name.startswith("dropblock_jax") else "torch", name))
        if row is None or row.ratio is None:
            lines.append(f"- {name}: <= {bound}x: not measured")
            continue
        met = row.ratio <= bound and row.backward_ratio <= bound
        line = f"- {name}: <= {bound}x {row.baseline}: forward {row.ratio:.2f}x, fwd+bwd {row.backward_ratio:.2f}x"
        dropout = by_name.get((row.framework, DROPOUT[_mode(row)]))
        if dropout is not None and None not in (row.peak_mb, dropout.peak_mb):
            slack = memory_slack_mb(case)
            memory_met = (
                row.peak_mb <= dropout.peak_mb + slack and row.backward_peak_mb <= dropout.backward_peak_mb + slack
            )
            met = met and memory_met
            line += (
                f"; peak {row.peak_mb:.1f} / {row.backward_peak_mb:.1f} MB vs dropout's "
                f"{dropout.peak_mb:.1f} / {dropout.backward_peak_mb:.1f}"
            )
        floor = by_name.get((row.framework, FLOOR[_mode(row)]))
        if gpu and floor is not None:
            share = row.gb_per_s / floor.gb_per_s
            met = met and share >= bandwidth
            line += f"; {share:.0%} of the floor's {floor.gb_per_s:.0f} GB/s (>= {bandwidth:.0%})"
        lines.append(f"{line} -> {'met' if met else 'NOT met'}")
    return "\n".join(lines)


def relaunch_with_steady_allocator(module: str, argv: list[str]) -> None:
    """Run ``python -m module argv`` again with ``ALLOCATOR_ENV`` set (glibc reads it only at start-up)."""
    if sys.platform != "linux" or all(os.environ.get(k) == v for k, v in ALLOCATOR_ENV.items()):
        return
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], {**os.environ, **ALLOCATOR_ENV})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cases", type=int, default=len(CASES), help="run the first N shapes")
    parser.add_argument(
        "--batch-multiple",
        type=int,
        default=None,
        help="multiply each shape's batch (default: 1 on the CPU, 8 on a GPU, where the shapes above "
        "take a few microseconds and would time kernel launches rather than memory traffic)",
    )
    parser.add_argument("--no-compiled", dest="compiled", action="store_false", help="no torch.compile rows")
    args = parser.parse_args(argv)
    multiple = args.batch_multiple if args.batch_multiple is not None else (8 if args.device == "gpu" else 1)
    if multiple < 1:
        parser.error(f"--batch-multiple must be at least 1, got --batch-multiple={multiple}.")
    cases = [Case((case.shape[0] * multiple, *case.shape[1:]), case.block_size) for case in CASES[: args.cases]]
    jax_device = jax.devices("gpu" if args.device == "gpu" else "cpu")[0]
    torch_device = torch.device("cuda" if args.device == "gpu" else "cpu")
    rows = []
    for case in cases:
        rows += jax_rows(case, args.repeats, jax_device) + torch_rows(case, args.repeats, torch_device, args.compiled)
    rows = with_ratios(rows)
    cpu = f"{torch.get_num_threads()} torch threads" if args.device == "cpu" else torch.cuda.get_device_name()
    print(
        f"DropBlock benchmark: {args.device} ({cpu}), jax {jax.__version__}, torch {torch.__version__}, "
        f"drop_prob {DROP_PROB}, median of {args.repeats} repeats\n"
    )
    print(table(rows))
    print()
    print(targets(rows, cases[0], gpu=args.device == "gpu"))


if __name__ == "__main__":
    relaunch_with_steady_allocator("benchmarks.bench", sys.argv[1:])  # only as a command: it replaces the process
    main()
