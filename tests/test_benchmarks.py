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
    text = bench.table(rows)
    assert text.count("\n") == len(rows) + 1 and "dropblock_torch per-channel" in text
    assert "Targets on" in bench.targets(rows, small)


def test_benchmark_command_line_help():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "--repeats" in result.stdout
