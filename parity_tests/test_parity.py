"""The parity checks of ``python -m parity_tests`` as pytest tests, with fewer draws."""

import dataclasses

import numpy as np
import pytest

from parity_tests import exact, statistical

PYTEST_DRAWS = 1024


def assert_all_passed(checks):
    failed = [f"{c.config}: {c.statistic}: {c.test_statistic} ({c.bound})" for c in checks if not c.passed]
    assert checks and not failed, "\n".join(failed)


def verdicts(checks):
    return {c.statistic.split(" (")[0]: c.passed for c in checks}


@pytest.mark.parametrize("config", exact.exact_configs(), ids=lambda c: c.name.replace(" ", "_"))
def test_exact_parity(config, parity_devices):
    assert_all_passed(exact.run_exact(config, parity_devices))


def test_traced_rates_agree_with_the_spec(parity_devices):
    assert_all_passed(exact.run_rates(parity_devices))


def test_schedules_agree_with_linspace():
    assert_all_passed(exact.run_schedules())


def test_statistical_parity(parity_devices):
    # One test for the whole family: the per-test level depends on every configuration's tests.
    results = [statistical.measure(config, PYTEST_DRAWS, parity_devices, seed=1) for config in statistical.CONFIGS]
    assert_all_passed(statistical.judge(results))


@pytest.fixture(scope="module")
def paper_draws(parity_devices):
    """Draws of the paper's configuration, and of one whose rate is 20% too high."""
    config = statistical.CONFIGS[0]
    too_high = dataclasses.replace(config, drop_prob=config.drop_prob * 1.2)
    return (
        config,
        statistical.draw(config, PYTEST_DRAWS, parity_devices, seed=2),
        statistical.draw(too_high, PYTEST_DRAWS, parity_devices, seed=2),
    )


def test_the_bonferroni_divisor_is_the_number_of_tests_run(paper_draws):
    config, draws, _ = paper_draws
    result = statistical.analyse(config, draws)
    # Nothing shared: mean vs analytic (2), jax vs torch (1), KS (1), position maps (2), channel
    # correlation (2); whole blocks and the scale hold in every draw and are no statistical tests.
    assert statistical.number_of_tests([result]) == 8
    assert statistical.per_test_level([result]) == pytest.approx(statistical.SUITE_FALSE_ALARM / 8)
    assert statistical.per_test_level([result, result]) == pytest.approx(statistical.SUITE_FALSE_ALARM / 16)
    assert_all_passed(statistical.judge([result]))


def test_a_twin_that_drops_too_much_fails(paper_draws):
    config, draws, too_high = paper_draws
    mixed = statistical.Draws(x=draws.x, out={"jax": draws.out["jax"], "torch": too_high.out["torch"]})
    passed = verdicts(statistical.judge([statistical.analyse(config, mixed)]))
    assert not passed["mean dropped fraction"]
    assert passed["dropped regions are whole blocks"] and passed["correlation of channel pairs' dropped fractions"]


def test_a_twin_with_a_wrong_scale_or_a_partial_block_fails(paper_draws):
    config, draws, _ = paper_draws
    torch_out = draws.out["torch"] * np.float32(1.05)
    torch_out.reshape(-1)[np.flatnonzero(torch_out == 0)[0]] = 1.0  # one dropped unit kept: a block with a hole
    mixed = statistical.Draws(x=draws.x, out={"jax": draws.out["jax"], "torch": torch_out})
    passed = verdicts(statistical.judge([statistical.analyse(config, mixed)]))
    assert not passed["E[out] / E[x], normalize='expected'"]
    assert not passed["dropped regions are whole blocks"]
    assert passed["mean dropped fraction"]


def test_the_cli_writes_the_report_and_exits_zero(tmp_path, monkeypatch):
    from parity_tests import __main__ as cli

    # A small run of the whole command: the table, the files, the exit status.
    few_exact = exact.exact_configs(every_dtype=False)[:2]
    monkeypatch.setattr(exact, "exact_configs", lambda: few_exact)
    monkeypatch.setattr(exact, "RATE_CASES", exact.RATE_CASES[:1])
    monkeypatch.setattr(statistical, "CONFIGS", [statistical.CONFIGS[0], statistical.CONFIGS[-1]])
    assert cli.main(["--device", "cpu", "--out", str(tmp_path), "--draws", "256"]) == 0
    for name in ("report.md", "results.json", "drop_frequency.png", "dropped_fraction_hist.png"):
        assert (tmp_path / name).stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert "checks passed" in report and "statistical tests share a false-alarm rate of 0.001" in report
    # A row comparing the twins with each other leaves their value columns empty.
    assert "| output, jax vs torch (max ulps) |  |  |  | 0 | <= 1 | pass |" in report


def test_outputs_two_ulps_apart_pass_only_under_the_gpu_bound():
    # XLA's float32 division on a GPU is within 2 ulp (then one more rounding in the product), so
    # a counted scale may differ there; on the CPU the twins must agree to 1 ulp.
    config = exact.exact_configs()[0]
    out = np.array([1.0, 0.0, 2.0], np.float32)
    apart = out.copy()
    apart[0] = np.nextafter(np.nextafter(out[0], np.float32(2)), np.float32(2))
    jax_twin, torch_twin = exact.TwinResult(out=out, grad=out), exact.TwinResult(out=apart, grad=out)
    on_cpu = verdicts(exact.exact_checks(config, jax_twin, torch_twin, out))
    on_gpu = verdicts(exact.exact_checks(config, jax_twin, torch_twin, out, max_ulps=exact.GPU_ULPS))
    assert not on_cpu["output, jax vs torch"] and on_cpu["gradient, jax vs torch"]
    assert on_gpu["output, jax vs torch"]
    assert on_cpu["dropped fraction of the mask"] and on_gpu["dropped fraction of the mask"]
