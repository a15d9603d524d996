"""The parity checks of ``python -m parity_tests`` as pytest tests, with fewer draws."""

import pytest

from parity_tests import exact, statistical

PYTEST_DRAWS = 1024


def assert_all_passed(checks):
    failed = [f"{c.config}: {c.statistic}: {c.test_statistic} ({c.bound})" for c in checks if not c.passed]
    assert checks and not failed, "\n".join(failed)


@pytest.mark.parametrize("config", exact.exact_configs(), ids=lambda c: c.name.replace(" ", "_"))
def test_exact_parity(config, parity_devices):
    assert_all_passed(exact.run_exact(config, parity_devices))


def test_traced_rates_agree_with_the_spec(parity_devices):
    assert_all_passed(exact.run_rates(parity_devices))


def test_schedules_agree_with_linspace():
    assert_all_passed(exact.run_schedules())


@pytest.mark.parametrize("config", statistical.CONFIGS, ids=lambda c: c.name.replace(" ", "_"))
def test_statistical_parity(config, parity_devices):
    checks, _ = statistical.run_statistical(config, PYTEST_DRAWS, parity_devices, seed=1)
    assert_all_passed(checks)


def test_the_cli_writes_the_report_and_exits_zero(tmp_path, monkeypatch):
    from parity_tests import __main__ as cli

    # A small run of the whole command: the table, the files, the exit status.
    few_exact = exact.exact_configs(every_dtype=False)[:2]
    monkeypatch.setattr(exact, "exact_configs", lambda: few_exact)
    monkeypatch.setattr(statistical, "CONFIGS", statistical.CONFIGS[:1] + statistical.CONFIGS[-1:])
    assert cli.main(["--device", "cpu", "--out", str(tmp_path), "--draws", "256"]) == 0
    for name in ("report.md", "results.json", "drop_frequency.png", "dropped_fraction_hist.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "checks passed" in (tmp_path / "report.md").read_text()
