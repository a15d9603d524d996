"""The parity report: a terminal table, ``report.md``, ``results.json`` and PNG figures."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from parity_tests.checks import Check
from parity_tests.statistical import FigureData

COLUMNS = ("configuration", "statistic", "jax", "torch", "analytic", "test statistic", "bound", "verdict")
FRAMEWORK_COLOURS = {"jax": "tab:blue", "torch": "tab:orange"}


def cell(value: Any) -> str:
    """A value as the table shows it: empty for None, yes/no for booleans, 5 significant digits.

    Examples:
      >>> cell(None), cell(True), cell(0.123456789), cell(3)
      ('', 'yes', '0.12346', '3')
    """
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return f"{value:.5g}"
    return str(value)


def rows(checks: Sequence[Check]) -> list[tuple[str, ...]]:
    """One table row per check, in ``COLUMNS`` order."""
    return [
        (
            c.config,
            c.statistic,
            cell(c.jax),
            cell(c.torch),
            cell(c.analytic),
            cell(c.test_statistic),
            c.bound,
            "pass" if c.passed else "FAIL",
        )
        for c in checks
    ]


def _severity(check: Check) -> tuple[bool, float]:
    number = check.test_statistic if isinstance(check.test_statistic, int | float) else 0.0
    return (not check.passed, number)


def exact_summary(checks: Sequence[Check]) -> list[Check]:
    """One row per statistic for the many exact configurations: the worst test statistic and the failures.

    Examples:
      >>> rows_ = [Check(kind="exact", config=str(i), statistic="ulps", test_statistic=i, bound="<= 1", passed=i <= 1)
      ...          for i in range(3)]
      >>> summary = exact_summary(rows_)[0]
      >>> summary.config, summary.test_statistic, summary.passed
      ('3 configurations, 1 failed', 'worst: 2', False)
    """
    summary = []
    for statistic in dict.fromkeys(c.statistic for c in checks):
        group = [c for c in checks if c.statistic == statistic]
        worst = max(group, key=_severity)
        failed = sum(not c.passed for c in group)
        summary.append(
            Check(
                kind="exact",
                config=f"{len(group)} configurations, {failed} failed",
                statistic=statistic,
                test_statistic=f"worst: {cell(worst.test_statistic)}",
                bound=worst.bound,
                passed=failed == 0,
            )
        )
    return summary


def text_table(table_rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """``table_rows`` under ``COLUMNS``: aligned plain text, or a markdown table."""
    if markdown:
        escape = lambda text: text.replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
        lines += ["| " + " | ".join(map(escape, r)) + " |" for r in table_rows]
        return "\n".join(lines)
    widths = [max(len(COLUMNS[i]), *(len(r[i]) for r in table_rows)) for i in range(len(COLUMNS))]
    line = lambda r: "  ".join(text.ljust(w) for text, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths]), *map(line, table_rows)])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plane(frequency: np.ndarray) -> tuple[np.ndarray, str]:
    """A 2D picture of a 2D or 3D map, and what it shows: a 3D map's middle slice along D (its first axis)."""
    if frequency.ndim == 3:
        index = frequency.shape[0] // 2
        return frequency[index], f"slice D = {index} of 0..{frequency.shape[0] - 1} (first spatial axis)"
    return frequency, ""


def _draw_line(subfigure, data: FigureData) -> None:
    ax = subfigure.subplots()
    positions = np.arange(data.analytic_frequency.shape[0])
    for framework, colour in FRAMEWORK_COLOURS.items():
        ax.plot(positions, data.frequency[framework], color=colour, marker=".", label=framework)
    ax.plot(positions, data.analytic_frequency, color="black", linestyle="--", label="analytic")
    ax.set_ylim(bottom=0.0)  # from 0, as the images
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("position")
    ax.set_ylabel("drop frequency")
    ax.legend(fontsize=7, loc="lower center", ncols=3)
    subfigure.suptitle(data.config, fontsize=9)


def _draw_images(subfigure, data: FigureData) -> None:
    images = {**data.frequency, "analytic": data.analytic_frequency}
    planes = {name: _plane(image)[0] for name, image in images.items()}
    # From 0: a map that is flat in truth must not show its noise as contrast.
    high = max(plane.max() for plane in planes.values())
    axes = subfigure.subplots(1, 3)
    for ax, (name, plane) in zip(axes, planes.items()):
        shown = ax.imshow(plane, vmin=0.0, vmax=high, cmap="viridis")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("W", fontsize=7)
        ax.set_ylabel("H", fontsize=7)
        ax.tick_params(labelsize=6)
    subfigure.colorbar(shown, ax=axes, label="drop frequency", shrink=0.9)
    slice_name = _plane(data.analytic_frequency)[1]
    subfigure.suptitle(f"{data.config}: {slice_name}" if slice_name else data.config, fontsize=9)


def drop_frequency_figure(figure_data: Sequence[FigureData], path: pathlib.Path) -> pathlib.Path:
    """Per-position drop frequency of each configuration: jax | torch | analytic (1D: three lines)."""
    plt = _pyplot()
    columns = 2
    grid_rows = -(-len(figure_data) // columns)
    fig = plt.figure(figsize=(8 * columns, 2.8 * grid_rows), layout="constrained")
    fig.suptitle("Per-position drop frequency: jax and torch over their draws, analytic 1 - (1 - gamma)^c(pos)")
    subfigures = np.atleast_1d(fig.subfigures(grid_rows, columns)).ravel()
    for subfigure, data in zip(subfigures, figure_data):
        (_draw_line if data.analytic_frequency.ndim == 1 else _draw_images)(subfigure, data)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def fraction_bins(fractions: np.ndarray, units: int) -> np.ndarray:
    """Histogram bins: one per attainable fraction (multiples of ``1 / units``) when few, else 40.

    Examples:
      >>> fraction_bins(np.array([0.0, 0.5, 1.0]), 2)
      array([-0.25,  0.25,  0.75,  1.25])
    """
    low, high = fractions.min(), fractions.max()
    if (high - low) * units <= 60:
        return (np.arange(round(low * units), round(high * units) + 2) - 0.5) / units
    return np.linspace(low, high + 1e-9, 40)


def dropped_fraction_figure(figure_data: Sequence[FigureData], path: pathlib.Path) -> pathlib.Path:
    """Histograms of the per-plane dropped fraction, jax and torch, with the analytic mean."""
    plt = _pyplot()
    columns = 2
    grid_rows = -(-len(figure_data) // columns)
    fig, axes = plt.subplots(grid_rows, columns, figsize=(7 * columns, 2.8 * grid_rows), layout="constrained")
    fig.suptitle("Dropped fraction of each independent plane (mask): distribution in jax and torch")
    axes = np.atleast_1d(axes).ravel()
    for ax, data in zip(axes, figure_data):
        bins = fraction_bins(np.concatenate(list(data.fractions.values())), data.analytic_frequency.size)
        for framework, colour in FRAMEWORK_COLOURS.items():
            fractions = data.fractions[framework]
            weights = np.full(fractions.size, 1 / fractions.size)  # bars of a framework sum to 1
            ax.hist(fractions, bins=bins, weights=weights, alpha=0.5, color=colour, label=framework)
        ax.axvline(data.expected, color="black", linestyle="--", label=f"analytic mean {data.expected:.4f}")
        ax.set_title(data.config, fontsize=9)
        ax.set_xlabel("dropped fraction of a plane", fontsize=8)
        ax.set_ylabel("share of planes", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in axes[len(figure_data) :]:
        ax.axis("off")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def figures(figure_data: Sequence[FigureData], out: pathlib.Path) -> list[pathlib.Path]:
    """Write ``drop_frequency.png`` and ``dropped_fraction_hist.png`` to ``out``; their paths."""
    return [
        drop_frequency_figure(figure_data, out / "drop_frequency.png"),
        dropped_fraction_figure(figure_data, out / "dropped_fraction_hist.png"),
    ]


def write(out: pathlib.Path, header: str, checks: Sequence[Check], figure_paths: Sequence[pathlib.Path]) -> None:
    """Write ``report.md`` (tables and figures) and ``results.json`` (every check) to ``out``."""
    exact = [c for c in checks if c.kind == "exact"]
    statistical = [c for c in checks if c.kind == "statistical"]
    failed = [c for c in checks if not c.passed]
    sections = [
        "# DropBlock parity report",
        header,
        f"**{len(checks) - len(failed)} of {len(checks)} checks passed.**",
        "## Statistical parity",
        "jax, torch: the statistic in each framework's draws; analytic: `dropblock_common`'s value; "
        "test statistic: what the verdict compares with the bound.",
        text_table(rows(statistical), markdown=True),
        "## Exact parity (summary)",
        "The worst test statistic of each kind of check over all configurations.",
        text_table(rows(exact_summary(exact)), markdown=True),
        "## Figures",
        *(f"![{p.stem}]({p.name})" for p in figure_paths),
        "## Exact parity (every configuration)",
        "Where jax and torch are empty the row compares the twins with each other: its test statistic "
        "is their distance in units in the last place (ulps) or in differing units.",
        text_table(rows(exact), markdown=True),
    ]
    (out / "report.md").write_text("\n\n".join(sections) + "\n")
    (out / "results.json").write_text(json.dumps([c.as_dict() for c in checks], indent=1))
