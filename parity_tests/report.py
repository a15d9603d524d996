"""The parity report: a terminal table, ``report.md``, ``results.json`` and PNG figures."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from parity_tests.checks import Check

COLUMNS = ("configuration", "statistic", "jax", "torch", "analytic", "test statistic", "verdict")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return f"{value:.5g}"
    return str(value)


def rows(checks: Sequence[Check]) -> list[tuple[str, ...]]:
    return [
        (
            c.config,
            c.statistic,
            _cell(c.jax),
            _cell(c.torch),
            _cell(c.analytic),
            f"{_cell(c.test_statistic)} ({c.bound})",
            "pass" if c.passed else "FAIL",
        )
        for c in checks
    ]


def exact_summary(checks: Sequence[Check]) -> list[Check]:
    """One row per statistic for the many exact configurations: the worst value and the count."""
    summary = []
    for statistic in dict.fromkeys(c.statistic for c in checks):
        group = [c for c in checks if c.statistic == statistic]
        worst = max(
            group, key=lambda c: (not c.passed, c.test_statistic if isinstance(c.test_statistic, int | float) else 0)
        )
        failed = sum(not c.passed for c in group)
        summary.append(
            Check(
                "exact",
                f"{len(group)} configurations",
                statistic,
                worst.jax,
                worst.torch,
                worst.analytic,
                worst.test_statistic,
                f"worst; {worst.bound}; {failed} failed",
                failed == 0,
            )
        )
    return summary


def text_table(table_rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    widths = [max(len(COLUMNS[i]), *(len(r[i]) for r in table_rows)) for i in range(len(COLUMNS))]
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in table_rows]
        return "\n".join(lines)
    line = lambda r: "  ".join(cell.ljust(w) for cell, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths]), *map(line, table_rows)])


def figures(figure_data: Sequence[dict], out: pathlib.Path) -> list[pathlib.Path]:
    """Per-position drop frequency (jax | torch | analytic) and per-plane dropped-fraction histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(len(figure_data), 3, figsize=(9, 2.6 * len(figure_data)), squeeze=False)
    for row, data in zip(axes, figure_data):
        images = [data["maps"]["jax"], data["maps"]["torch"], data["analytic_map"]]
        images = [_as_image(image) for image in images]
        low, high = min(i.min() for i in images), max(i.max() for i in images)
        for ax, image, title in zip(row, images, ("jax", "torch", "analytic")):
            shown = ax.imshow(image, vmin=low, vmax=high, cmap="viridis", aspect="auto")
            ax.set_title(f"{title}: {data['config']}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(shown, ax=row.tolist(), fraction=0.02)
    path = out / "drop_frequency.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    paths.append(path)

    columns = 2
    fig, axes = plt.subplots(
        -(-len(figure_data) // columns), columns, figsize=(10, 2.4 * -(-len(figure_data) // columns)), squeeze=False
    )
    for ax, data in zip(axes.ravel(), figure_data):
        both = np.concatenate([data["fractions"]["jax"], data["fractions"]["torch"]])
        bins = np.linspace(both.min(), both.max() + 1e-9, 30)
        for framework, color in (("jax", "tab:blue"), ("torch", "tab:orange")):
            ax.hist(data["fractions"][framework], bins=bins, alpha=0.5, color=color, label=framework, density=True)
        ax.axvline(data["expected"], color="black", linestyle="--", label="analytic mean")
        ax.set_title(data["config"], fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(figure_data) :]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("per-plane dropped fraction", fontsize=9)
    fig.tight_layout()
    path = out / "dropped_fraction_hist.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    paths.append(path)
    return paths


def _as_image(frequency: np.ndarray) -> np.ndarray:
    """A 2D picture of a per-position map: 1D as one row, 3D as its middle slice."""
    if frequency.ndim == 1:
        return frequency[None, :]
    if frequency.ndim == 3:
        return frequency[frequency.shape[0] // 2]
    return frequency


def write(out: pathlib.Path, header: str, checks: Sequence[Check], figure_paths: Sequence[pathlib.Path]) -> None:
    exact = [c for c in checks if c.kind == "exact"]
    statistical = [c for c in checks if c.kind == "statistical"]
    failed = [c for c in checks if not c.passed]
    sections = [
        "# DropBlock parity report",
        header,
        f"**{len(checks) - len(failed)} of {len(checks)} checks passed.**",
        "## Statistical parity",
        text_table(rows(statistical), markdown=True),
        "## Exact parity (summary)",
        text_table(rows(exact_summary(exact)), markdown=True),
        "## Figures",
        *(f"![{p.stem}]({p.name})" for p in figure_paths),
        "## Exact parity (every configuration)",
        text_table(rows(exact), markdown=True),
    ]
    (out / "report.md").write_text("\n\n".join(sections) + "\n")
    (out / "results.json").write_text(json.dumps([c.as_dict() for c in checks], indent=1))
