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


def argument_parser() -> argparse.ArgumentParser:
    """The command line's options: ``--device``, ``--out``, ``--draws``."""
    # The program's name as it was called: ``dropblock-parity`` or ``python -m parity_tests``.
    program = "python -m parity_tests" if sys.argv[0].endswith("__main__.py") else None
    parser = argparse.ArgumentParser(prog=program, description=__doc__.splitlines()[0])
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
    return parser


def run_suite(devices, draws: int) -> tuple[list, list]:
    """Every exact check (judged) and every statistical configuration's results (not yet judged)."""
    from parity_tests import exact, statistical

    checks, results = [], []
    exact_configs = exact.exact_configs()
    with tqdm(total=len(exact_configs) + len(statistical.CONFIGS) + 2, desc="parity", unit="check") as progress:
        for config in exact_configs:
            checks += exact.run_exact(config, devices)
            progress.update()
        checks += exact.run_rates(devices) + exact.run_schedules()
        progress.update(2)
        for config in statistical.CONFIGS:
            progress.set_postfix_str(config.name)
            results.append(statistical.measure(config, draws, devices))
            progress.update()
    return checks, results


def print_summary(checks: list, header: str, out: pathlib.Path) -> None:
    """The statistical rows and the exact summary as a table, the header, and every failure."""
    from parity_tests import report

    shown = [c for c in checks if c.kind == "statistical"] + report.exact_summary(
        [c for c in checks if c.kind == "exact"]
    )
    print(report.text_table(report.rows(shown)))
    failed = [c for c in checks if not c.passed]
    print(f"\n{header}\n{len(checks) - len(failed)} of {len(checks)} checks passed; report in {out}/report.md")
    for check in failed:
        print(f"FAILED: {check.config}: {check.statistic}: {check.test_statistic} ({check.bound})")


def main(argv: list[str] | None = None) -> int:
    """Run the suite as ``argv`` (default: the command line) says and write the report.

    Args:
      argv: the command-line arguments, without the program name.

    Returns:
      0 if every check passed, 1 if not.

    Raises:
      SystemExit: for ``--help`` (status 0) or a bad argument (status 2), from argparse.

    Examples:
      >>> main(["--draws", "8"])
      Traceback (most recent call last):
      SystemExit: 2
    """
    parser = argument_parser()
    args = parser.parse_args(argv)
    if args.draws < 64:
        parser.error(f"--draws must be at least 64, got --draws={args.draws}.")

    # Imported only now, so that --help and a bad option answer without loading jax and torch.
    from parity_tests import devices as device_choice
    from parity_tests import report, statistical

    try:
        devices = device_choice.resolve(args.device)
    except ValueError as error:
        parser.error(str(error))
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    checks, results = run_suite(devices, args.draws)
    # Judged only now: the per-test level depends on how many tests all configurations produced.
    checks += statistical.judge(results)
    figure_paths = report.figures([result.figure for result in results], args.out)
    header = (
        f"Device: {devices.describe()}. Draws per configuration and framework: {args.draws}. "
        f"{statistical.number_of_tests(results)} statistical tests share a false-alarm rate of "
        f"{statistical.SUITE_FALSE_ALARM:g} (Bonferroni: each at {statistical.per_test_level(results):.2g}). "
        f"Took {time.perf_counter() - start:.0f} s."
    )
    report.write(args.out, header, checks, figure_paths)
    print_summary(checks, header, args.out)
    return 0 if all(check.passed for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
