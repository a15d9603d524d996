"""The README's results table: digits, a small training split, three regularisers, both frameworks.

    python -m examples.digits_results --seeds 5

Trains the example ResNet (width 16) on 300 of scikit-learn's digits, upsampled to 32x32,
without regularisation, with dropout and with scheduled DropBlock, and prints the test
accuracy (mean and standard deviation over the seeds) as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

VARIANTS = {
    "none": ["--no-dropblock"],
    "dropout 0.1 (same places)": ["--dropout", "0.1"],
    "DropBlock 0.1, block 3, ramped": ["--drop-prob", "0.1", "--block-size", "3"],
}
COMMON = [
    "--dataset",
    "digits",
    "--train-size",
    "300",
    "--width",
    "16",
    "--epochs",
    "15",
    "--batch-size",
    "50",
    "--lr",
    "0.05",
    "--quiet",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default="runs/digits_results")
    args = parser.parse_args(argv)
    from examples import resnet_cifar10_flax, resnet_cifar10_torch

    mains = {"flax": resnet_cifar10_flax.main, "torch": resnet_cifar10_torch.main}
    results: dict[str, dict[str, list[float]]] = {}
    start = time.perf_counter()
    for framework, train in mains.items():
        for variant, flags in VARIANTS.items():
            for seed in range(args.seeds):
                out = pathlib.Path(args.out) / framework / variant.split()[0].lower() / str(seed)
                metrics = train([*COMMON, *flags, "--seed", str(seed), "--out", str(out)])
                results.setdefault(framework, {}).setdefault(variant, []).append(metrics["final_test_accuracy"])
                print(f"{framework} {variant} seed {seed}: {metrics['final_test_accuracy']:.4f}", flush=True)
    pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(args.out) / "results.json").write_text(json.dumps(results, indent=1))
    print(
        f"\nTest accuracy on digits (300 training images, 1497 test), {args.seeds} seeds, "
        f"{time.perf_counter() - start:.0f} s:\n"
    )
    print("| regulariser | Flax (NNX) | PyTorch |")
    print("|---|---|---|")
    for variant in VARIANTS:
        cells = []
        for framework in mains:
            values = results[framework][variant]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{100 * statistics.mean(values):.2f}% ± {100 * spread:.2f}")
        print(f"| {variant} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
