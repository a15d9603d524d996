"""Image data for the examples, as numpy arrays in the NHWC layout: CIFAR-10, digits, synthetic.

- ``cifar10``: the standard CIFAR-10 python batches (``data_batch_1`` .. ``data_batch_5``,
  ``test_batch``), placed locally in ``--data-dir``; nothing is downloaded.
- ``digits``: scikit-learn's 1797 real 8x8 handwritten digits, shipped inside the package,
  upsampled 4x to 32x32 so that blocks have room; a small stratified training split.
- ``synthetic``: small generated data for smoke tests.
"""

from __future__ import annotations

import dataclasses
import pathlib
import pickle

import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
    """Images ``(N, 32, 32, C)`` float32, normalised per channel, and int64 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: int

    @property
    def channels(self) -> int:
        return self.train_images.shape[-1]


def _normalised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=(0, 1, 2), keepdims=True)
    std = train.std(axis=(0, 1, 2), keepdims=True) + 1e-6
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32)


def _cifar_batch(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as file:
        batch = pickle.load(file, encoding="bytes")
    images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images.astype(np.float32) / 255.0, np.asarray(batch[b"labels"], np.int64)


def cifar10(data_dir: str | pathlib.Path) -> Split:
    """The CIFAR-10 python batches in ``data_dir`` (the folder ``cifar-10-batches-py``)."""
    data_dir = pathlib.Path(data_dir)
    train_files = sorted(data_dir.glob("data_batch_*"))
    test_file = data_dir / "test_batch"
    if not train_files or not test_file.exists():
        raise FileNotFoundError(
            f"--data-dir {data_dir} must hold the CIFAR-10 python batches (data_batch_1 .. data_batch_5 "
            "and test_batch, as unpacked from cifar-10-python.tar.gz)."
        )
    train = [_cifar_batch(path) for path in train_files]
    test_images, test_labels = _cifar_batch(test_file)
    train_images, test_images = _normalised(np.concatenate([t[0] for t in train]), test_images)
    return Split(train_images, np.concatenate([t[1] for t in train]), test_images, test_labels, 10)


def digits(train_size: int = 500, seed: int = 0) -> Split:
    """scikit-learn's handwritten digits, 8x8 upsampled to 32x32, ``train_size`` for training."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.kron(data.images.astype(np.float32) / 16.0, np.ones((1, 4, 4), np.float32))[..., None]
    train_x, test_x, train_y, test_y = train_test_split(
        images, data.target.astype(np.int64), train_size=train_size, stratify=data.target, random_state=seed
    )
    train_x, test_x = _normalised(train_x, test_x)
    return Split(train_x, train_y, test_x, test_y, 10)


def synthetic(size: int = 64, classes: int = 10, seed: int = 0) -> Split:
    """Random 32x32 RGB images whose class shifts their mean: tiny, learnable, for smoke tests."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, 2 * size)
    images = rng.normal(size=(2 * size, 32, 32, 3)).astype(np.float32) + labels[:, None, None, None] / classes
    train_x, test_x = _normalised(images[:size], images[size:])
    return Split(train_x, labels[:size], test_x, labels[size:], classes)


def load(dataset: str, data_dir: str | None, train_size: int, seed: int) -> Split:
    """The split a command line asks for."""
    if dataset == "synthetic":
        return synthetic(seed=seed)
    if dataset == "digits":
        return digits(train_size, seed)
    if data_dir is None:
        raise SystemExit(
            "--dataset cifar10 needs --data-dir (the unpacked cifar-10-batches-py folder), or use --synthetic."
        )
    return cifar10(data_dir)


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, rng: np.random.Generator | None):
    """Minibatches; shuffled (dropping the last partial batch) when ``rng`` is given."""
    order = rng.permutation(len(images)) if rng is not None else np.arange(len(images))
    stop = len(images) - len(images) % batch_size if rng is not None else len(images)
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield images[index], labels[index]
