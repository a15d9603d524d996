"""``python -m parity_tests [--device auto|cpu|gpu] [--out DIR] [--draws N]``: the parity report.

Runs the exact and the statistical parity checks of both twins, prints a table, writes
``report.md``, ``results.json`` and PNG figures to ``--out``, and exits with status 1 if any
check fails.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from tqdm import tqdm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parity_tests", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "gpu"),
        help="where both frameworks run (default: a GPU if both see one)",
    )
    parser.add_argument(
        "--out", default="parity_report", type=pathlib.Path, help="folder for report.md, results.json and figures"
    )
    parser.add_argument("--draws", default=8192, type=int, help="independent masks per configuration and framework")
    args = parser.parse_args(argv)
    if args.draws < 64:
        parser.error(f"--draws must be at least 64, got --draws={args.draws}.")

    from parity_tests import devices as device_choice
    from parity_tests import exact, report, statistical

    try:
        devices = device_choice.resolve(args.device)
    except ValueError as error:
        parser.error(str(error))
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    checks, figure_data = [], []
    exact_configs = exact.exact_configs()
    with tqdm(total=len(exact_configs) + len(statistical.CONFIGS) + 2, desc="parity", unit="check") as progress:
        for config in exact_configs:
            checks += exact.run_exact(config, devices)
            progress.update()
        checks += exact.run_rates(devices) + exact.run_schedules()
        progress.update(2)
        for config in statistical.CONFIGS:
            progress.set_postfix_str(config.name)
            config_checks, figure = statistical.run_statistical(config, args.draws, devices)
            checks += config_checks
            figure_data.append(figure)
            progress.update()
    figure_paths = report.figures(figure_data, args.out)
    elapsed = time.perf_counter() - start
    header = (
        f"Device: {devices.describe()}. Draws per configuration and framework: {args.draws}. "
        f"Statistical tests share a false-alarm rate of {statistical.SUITE_FALSE_ALARM:g} (Bonferroni: "
        f"each at {statistical.ALPHA:.2e}, |z| < {statistical.Z_BOUND:.2f}). Took {elapsed:.0f} s."
    )
    report.write(args.out, header, checks, figure_paths)

    shown = [c for c in checks if c.kind == "statistical"] + report.exact_summary(
        [c for c in checks if c.kind == "exact"]
    )
    print(report.text_table(report.rows(shown)))
    failed = [c for c in checks if not c.passed]
    print(f"\n{header}\n{len(checks) - len(failed)} of {len(checks)} checks passed; report in {args.out}/report.md")
    for check in failed:
        print(f"FAILED: {check.config}: {check.statistic}: {check.test_statistic} ({check.bound})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
