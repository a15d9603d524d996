"""What both example scripts share: the command line, the metrics file and the curves."""

from __future__ import annotations

import argparse
import json
import pathlib


def arguments(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "digits", "synthetic"))
    parser.add_argument("--data-dir", help="the unpacked cifar-10-batches-py folder (for --dataset cifar10)")
    parser.add_argument("--synthetic", action="store_true", help="small generated data (same as --dataset synthetic)")
    parser.add_argument("--train-size", type=int, default=500, help="training images for --dataset digits")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=None, help="stop after this many training steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate (cosine decay)")
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage (ResNet-18: 64)")
    parser.add_argument("--drop-prob", type=float, default=0.1, help="DropBlock's final drop_prob (stage 4)")
    parser.add_argument("--block-size", type=int, default=None, help="override the preset's block size")
    parser.add_argument("--preset", default="paper", choices=("paper", "timm"), help="where DropBlock goes")
    parser.add_argument("--no-dropblock", action="store_true", help="the baseline: no DropBlock")
    parser.add_argument("--dropout", type=float, default=0.0, help="plain dropout at DropBlock's places instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/example", help="folder for metrics.json and curves.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.synthetic:
        args.dataset = "synthetic"
    if args.no_dropblock and args.dropout:
        parser.error("--no-dropblock and --dropout are two different baselines: pick one.")
    return args


def regulariser(args: argparse.Namespace) -> str:
    if args.dropout:
        return f"dropout {args.dropout}"
    return "none" if args.no_dropblock else f"dropblock {args.drop_prob} ({args.preset})"


def epoch_entry(epoch: int, step: int, losses: list[float], accuracies: list[float], test_accuracy: float) -> dict:
    """One epoch's line of the history in ``metrics.json``."""
    return {
        "epoch": epoch,
        "step": step,
        "train_loss": float(sum(losses) / max(len(losses), 1)),
        "train_accuracy": float(sum(accuracies) / max(len(accuracies), 1)),
        "test_accuracy": test_accuracy,
    }


def epoch_line(entry: dict) -> str:
    return (
        f"epoch {entry['epoch']}: train loss {entry['train_loss']:.4f}, "
        f"train acc {entry['train_accuracy']:.3f}, test acc {entry['test_accuracy']:.3f}"
    )


def save(out: str | pathlib.Path, args: argparse.Namespace, history: list[dict], framework: str) -> dict:
    """Write ``metrics.json`` and ``curves.png`` to ``out``; return the metrics."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {
        "framework": framework,
        "dataset": args.dataset,
        "regulariser": regulariser(args),
        "seed": args.seed,
        "history": history,
        "final_test_accuracy": history[-1]["test_accuracy"] if history else None,
        "arguments": vars(args),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, accuracy_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = [h["epoch"] for h in history]
    loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="train loss")
    accuracy_ax.plot(epochs, [h["train_accuracy"] for h in history], marker="o", label="train")
    accuracy_ax.plot(epochs, [h["test_accuracy"] for h in history], marker="o", label="test")
    accuracy_ax.set(xlabel="epoch", ylabel="accuracy")
    accuracy_ax.legend()
    fig.suptitle(f"{framework}, {args.dataset}, {regulariser(args)}")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)
    return metrics
