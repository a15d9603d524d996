"""The benchmark runs and prints its table (speed itself is measured there, not asserted here)."""

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_benchmark_prints_a_table_with_ratios():
    from benchmarks import bench

    small = bench.Case((4, 32, 20, 20), 5)
    rows = bench.with_ratios(
        bench.jax_rows(small, 1, bench.jax.devices("cpu")[0]) + bench.torch_rows(small, 1, bench.torch.device("cpu"))
    )
    names = {row.name for row in rows}
    assert {
        "dropblock_jax per-channel",
        "dropblock_torch per-channel",
        "F.dropout",
        "jax dropout",
        "dropblock 0.3.0",
    } <= names
    ratios = {row.name: row.ratio for row in rows if row.framework == "jax"}
    assert ratios["dropblock_jax per-channel"] > 0 and ratios["x * s (floor)"] is None
    # The floor allocates its output and nothing else, in both frameworks' measurements.
    output_mb = 4 * 32 * 20 * 20 * 4 / 2**20
    for row in rows:
        if row.name == "x * s (floor)":
            assert output_mb <= row.peak_mb <= 1.05 * output_mb, row
            assert row.gb_per_s == pytest.approx(2 * output_mb * 2**20 / row.forward_ms / 1e6)
    text = bench.table(rows)
    assert text.count("\n") == len(rows) + 1 and "dropblock_torch per-channel" in text
    targets = bench.targets(rows, small, gpu=True)
    # A verdict for every target whose row was measured (the four eager ones at least), and a
    # "not measured" line for the others.
    measured = sum(any(row.name == name and row.ratio is not None for row in rows) for name, _, _ in bench.TARGETS)
    assert measured >= 4 and targets.count(" -> ") == measured
    assert targets.count("not measured") == len(bench.TARGETS) - measured
    assert "peak" in targets and "of the floor's" in targets


def test_interleaved_medians_time_every_run_once_a_round_in_shuffled_orders():
    from benchmarks import bench

    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    medians = bench.interleaved_medians(runs, repeats=5, sync=lambda _: None)
    rounds = [tuple(calls[i : i + 3]) for i in range(0, len(calls), 3)]
    assert len(rounds) == 8 and all(sorted(order) == ["a", "b", "c"] for order in rounds)
    # The order changes from round to round, the first run too.
    assert len(set(rounds)) > 1 and len({order[0] for order in rounds}) > 1
    assert set(medians) == {"a", "b", "c"} and all(value >= 0 for value in medians.values())


def test_torch_peak_memory_sees_a_temporary_that_is_freed():
    import torch

    from benchmarks import bench

    x = torch.ones(1 << 20)  # 4 MB
    # (x * 2) is a temporary freed before the call returns; the result (another 4 MB) is held.
    peak = bench.torch_peak_mb(lambda: (x * 2) + 1, torch.device("cpu"))
    assert 7.9 < peak < 8.1


@pytest.mark.slow
def test_benchmark_command_line_help():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "--repeats" in result.stdout


def test_interleaved_medians_time_several_calls_per_timing():
    from benchmarks import bench

    calls, synced = [], []
    medians = bench.interleaved_medians({"a": lambda: calls.append("a")}, repeats=2, sync=synced.append, calls=4)
    # 3 warm-up rounds and 2 timed ones, each 4 calls and one wait for the last.
    assert len(calls) == 5 * 4 and len(synced) == 5 and medians["a"] >= 0


def test_targets_compare_each_framework_with_its_own_floor():
    from benchmarks import bench

    case = bench.Case((2, 8, 10, 10), 3)

    def row(framework, name, gb_per_s, baseline=None):
        ratio = None if baseline is None else 1.1
        return bench.Row(
            case.name,
            framework,
            name,
            1.0,
            1.0,
            gb_per_s=gb_per_s,
            baseline=baseline,
            ratio=ratio,
            backward_ratio=ratio,
        )

    rows = [
        row("jax", "x * s (floor)", 100.0),
        row("torch", "x * s (floor)", 400.0),
        row("jax", "dropblock_jax shared-channel", 90.0, "x * s (floor)"),
        row("torch", "dropblock_torch shared-channel (full)", 100.0, "x * s (floor)"),
    ]
    lines = bench.targets(rows, case, gpu=True).splitlines()
    jax_line = next(line for line in lines if "dropblock_jax shared-channel" in line)
    torch_line = next(line for line in lines if "dropblock_torch shared-channel (full):" in line)
    assert "90% of the floor's 100 GB/s" in jax_line and jax_line.endswith("-> met")
    assert "25% of the floor's 400 GB/s" in torch_line and torch_line.endswith("-> NOT met")


def test_benchmark_refuses_a_batch_multiple_below_one(capsys):
    from benchmarks import bench

    with pytest.raises(SystemExit):
        bench.main(["--batch-multiple", "0"])
    assert "--batch-multiple=0" in capsys.readouterr().err
