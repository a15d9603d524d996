"""The training-step benchmark runs both twins on and off (its speed is measured there, not here)."""

import pytest

from benchmarks import training_step


def test_overhead_is_the_median_of_ratios_within_each_repeat():
    # A drift that slows the third repeat twice over slows both of its steps: the ratio holds.
    timing = training_step.Timing(on=[1.1, 1.2, 2.2], off=[1.0, 1.0, 2.0])
    assert timing.overhead == pytest.approx(0.1)


def test_every_step_runs_on_and_off_in_turn():
    calls = []
    variants = [
        training_step.Variant("torch", "eager", name, lambda on, name=name: calls.append((name, on)))
        for name in ("a", "b")
    ]
    timings = training_step.interleaved_timings(variants, repeats=2, warmup=1)
    assert [len(t.on) for t in timings] == [2, 2] and [len(t.off) for t in timings] == [2, 2]
    assert calls[:4] == [("a", False), ("a", True), ("b", False), ("b", True)]
    assert calls[4:8] == [("a", True), ("a", False), ("b", True), ("b", False)]


@pytest.mark.slow
def test_a_small_run_switches_dropblock_on_and_off(capsys):
    training_step.main(["--batch-size", "2", "--image-size", "16", "--width", "8", "--repeats", "1", "--no-compile"])
    out = capsys.readouterr().out
    assert "| torch | eager | dropblock_torch DropBlock2d |" in out
    assert "| jax | jit | dropblock_jax nnx.DropBlock |" in out
