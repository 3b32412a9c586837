"""Datasets by name, so that a trainer's arguments stay JSON: ``dataset="mnist"`` plus
``dataset_kwargs={"root": "data"}`` instead of a dataset object.

Each factory takes keyword arguments only and returns ``(train, valid)`` or
``(train, valid, test)``, :class:`TensorPairs` of ``(input, target)``; the
plugin registers them through the ``nastrain_register_datasets`` hook. The
validation set is what strategies select architectures by; a test split, where
a dataset has an official one, is never used for selection (the classic
trainers report it under separate ``test_*`` keys of the final result). The
data is read once per process and kept (an experiment's worker runs many
trials on it): factories are cached by their arguments.

- ``digits``: scikit-learn's bundled 8x8 digits, split reproducibly by ``seed``.
- ``diabetes``: scikit-learn's bundled diabetes regression data, standardized.
- ``mnist``, ``fashion_mnist``, ``cifar10``: read by torchvision from ``root``
  (``$NASTRAIN_DATA``, else ``./data``); ``download`` is off unless asked for,
  and missing files are an error saying where they were looked for and how to
  get them. The validation set (``valid_size`` images, stratified by class,
  chosen by ``seed``) is carved out of the official training split; the official
  test split is the third, ``test``, split. ``cifar10`` verifies its files'
  checksums by default (torchvision unpickles them).
- ``fake``: torchvision's ``FakeData``, random images of any size.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset

__all__ = [
    "DATASETS",
    "TensorPairs",
    "cifar10",
    "diabetes",
    "digits",
    "fake",
    "fashion_mnist",
    "mnist",
    "stratified_split",
]

#: The environment variable naming the default ``root`` of the torchvision datasets.
DATA_ENV = "NASTRAIN_DATA"

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR10_FILES = (
    *(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
)


class TensorPairs(Dataset):
    """``(input, target)`` pairs held as two tensors.

    Integer (``uint8``) images are kept as they are stored and scaled to
    ``[0, 1]`` then normalized with ``mean``/``std`` (one value per channel)
    when read, so a dataset costs its size on disk, not four times that.
    :meth:`batch` reads many items at once (what the classic trainers use).
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        self.inputs = inputs
        self.targets = targets
        self.mean = None if mean is None else torch.tensor(mean).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = self.batch(torch.tensor([index]))
        return inputs[0], targets[0]

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The items at ``index`` (a 1-D tensor of positions), as two batched tensors."""
        inputs = self.inputs[index]
        if inputs.dtype == torch.uint8:
            inputs = inputs.float().div_(255.0)
            if self.mean is not None and self.std is not None:
                inputs = (inputs - self.mean) / self.std
        return inputs, self.targets[index]


Splits = tuple[TensorPairs, TensorPairs]
#: ``(train, valid, test)``.
TestSplits = tuple[TensorPairs, TensorPairs, TensorPairs]


def _cached(factory: Callable[..., Any]) -> Callable[..., Any]:
    """Read each dataset once per process (per distinct arguments)."""
    cache: dict[str, Any] = {}

    @functools.wraps(factory)
    def cached(**kwargs: Any) -> Any:
        key = json.dumps(kwargs, sort_keys=True, default=str)
        if key not in cache:
            cache[key] = factory(**kwargs)
        return cache[key]

    cached.cache = cache  # type: ignore[attr-defined]
    return cached


def _split(n: int, valid_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be between 0 and 1, got {valid_fraction!r}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_valid = max(1, round(n * valid_fraction))
    return order[n_valid:], order[:n_valid]


def stratified_split(
    labels: torch.Tensor, valid_size: int, seed: int, *, what: str = "valid_size"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``(train, valid)`` of a split of ``labels`` with ``valid_size`` in
    ``valid``, each class represented in proportion to its share (largest remainders
    round), the members chosen by ``seed``; both sorted."""
    n = len(labels)
    if isinstance(valid_size, bool) or not isinstance(valid_size, int) or not 0 < valid_size < n:
        raise ValueError(
            f"{what} must be an integer between 1 and {n - 1} (the training split has {n} "
            f"items), got {valid_size!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    generator = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    quotas = counts.double() * valid_size / n
    take = quotas.floor().long()
    remainders = quotas - take
    short = valid_size - int(take.sum())
    if short:
        take[torch.argsort(remainders, descending=True, stable=True)[:short]] += 1
    valid = []
    for cls, k in zip(classes.tolist(), take.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        valid.append(members[torch.randperm(len(members), generator=generator)[:k]])
    valid_index = torch.cat(valid).sort().values
    mask = torch.ones(n, dtype=torch.bool)
    mask[valid_index] = False
    return torch.nonzero(mask).flatten(), valid_index


@_cached
def digits(*, valid_fraction: float = 0.2, seed: int = 0) -> Splits:
    """scikit-learn's 1797 8x8 digit images, as ``(N, 1, 8, 8)`` floats in ``[0, 1]`` and
    labels 0-9; ``valid_fraction`` of them, chosen by ``seed``, are the validation set."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.long)
    train, valid = _split(len(labels), valid_fraction, seed)
    return TensorPairs(images[train], labels[train]), TensorPairs(images[valid], labels[valid])


@_cached
def diabetes(*, valid_fraction: float = 0.2, seed: int = 0) -> Splits:
    """scikit-learn's diabetes data (442 patients, 10 features; the target a disease
    progression score), features and target standardized with the training split's mean
    and deviation; targets are ``(N, 1)``."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    features = torch.tensor(data.data, dtype=torch.float32)
    target = torch.tensor(data.target, dtype=torch.float32).unsqueeze(1)
    train, valid = _split(len(target), valid_fraction, seed)
    mean, std = features[train].mean(0), features[train].std(0)
    t_mean, t_std = target[train].mean(), target[train].std()
    features, target = (features - mean) / std, (target - t_mean) / t_std
    return TensorPairs(features[train], target[train]), TensorPairs(features[valid], target[valid])


def _root(root: str | None) -> Path:
    return Path(root if root is not None else os.environ.get(DATA_ENV, "data")).expanduser()


def _missing(folder: Path, names: Sequence[str], *, gz: bool = False) -> list[str]:
    return [
        name
        for name in names
        if not (folder / name).is_file() and not (gz and (folder / f"{name}.gz").is_file())
    ]


def _mnist_like(
    name: str, cls_name: str, title: str, size: str, url: str, mean: float, std: float
) -> Any:
    def factory(
        *, root: str | None = None, download: bool = False, valid_size: int = 5000, seed: int = 0
    ) -> TestSplits:
        import torchvision

        base = _root(root)
        raw = base / cls_name / "raw"
        missing = _missing(raw, _MNIST_FILES)
        if missing and not download:
            raise FileNotFoundError(
                f"{title} is not in {raw.resolve()}: missing {', '.join(missing)}. Pass "
                f'dataset_kwargs={{"root": "{base}", "download": true}} to download it there '
                f"({size}), or put the four idx files from {url} (unzipped) in that folder"
            )
        cls = getattr(torchvision.datasets, cls_name)
        official = cls(str(base), train=True, download=download)
        test = cls(str(base), train=False, download=download)
        images, labels = official.data.unsqueeze(1), official.targets
        train, valid = stratified_split(labels, valid_size, seed)
        return (
            TensorPairs(images[train], labels[train], mean=[mean], std=[std]),
            TensorPairs(images[valid], labels[valid], mean=[mean], std=[std]),
            TensorPairs(test.data.unsqueeze(1), test.targets, mean=[mean], std=[std]),
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f"{title}: ``(N, 1, 28, 28)`` images normalized with mean {mean} and deviation {std}, "
        "labels 0-9, as ``(train, valid, test)``: ``valid_size`` images of the official "
        "training split (stratified by class, chosen by ``seed``) are the validation set, "
        "the rest the training set; the official test split is ``test``, never used for "
        f"selection. Read by torchvision from ``root/{cls_name}/raw`` (``root``: "
        "``$NASTRAIN_DATA``, else ``./data``); ``download=True`` fetches it."
    )
    return _cached(factory)


mnist = _mnist_like(
    "mnist", "MNIST", "MNIST", "about 12 MB", "http://yann.lecun.com/exdb/mnist/", 0.1307, 0.3081
)
fashion_mnist = _mnist_like(
    "fashion_mnist",
    "FashionMNIST",
    "Fashion-MNIST",
    "about 30 MB",
    "https://github.com/zalandoresearch/fashion-mnist",
    0.2860,
    0.3530,
)


def _cifar10_files() -> type:
    import torchvision

    class CIFAR10Files(torchvision.datasets.CIFAR10):
        """torchvision's CIFAR10 reader, checking that the files exist but not their md5
        (:func:`cifar10` checks them itself, naming a file that does not match)."""

        _stock = torchvision.datasets.CIFAR10
        train_list: ClassVar[list[list[Any]]] = [[name, None] for name, _ in _stock.train_list]
        test_list: ClassVar[list[list[Any]]] = [[name, None] for name, _ in _stock.test_list]
        meta: ClassVar[dict[str, Any]] = {**_stock.meta, "md5": None}

    return CIFAR10Files


def _check_cifar10_md5(folder: Path) -> None:
    import hashlib

    import torchvision

    stock = torchvision.datasets.CIFAR10
    expected = [*stock.train_list, *stock.test_list, [stock.meta["filename"], stock.meta["md5"]]]
    for name, md5 in expected:
        path = folder / name
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as handle:
            for block in iter(functools.partial(handle.read, 1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != md5:
            raise ValueError(
                f"CIFAR-10 file {path} has md5 {digest.hexdigest()}, not the official "
                f"{md5}: it is not the file published at https://www.cs.toronto.edu/~kriz/"
                "cifar.html (corrupt, or another file). torchvision unpickles these files, "
                "which can run code, so they are checked first; pass "
                'dataset_kwargs={"check_md5": false} only for files you trust'
            )


@_cached
def cifar10(
    *,
    root: str | None = None,
    download: bool = False,
    check_md5: bool = True,
    valid_size: int = 5000,
    seed: int = 0,
) -> TestSplits:
    """CIFAR-10: ``(N, 3, 32, 32)`` images normalized per channel, labels 0-9, as
    ``(train, valid, test)``: ``valid_size`` images of the five training batches
    (stratified by class, chosen by ``seed``) are the validation set, the rest the
    training set; the test batch is ``test``, never used for selection. Read by
    torchvision from ``root/cifar-10-batches-py`` (``root``: ``$NASTRAIN_DATA``, else
    ``./data``); ``download=True`` fetches and unpacks the official archive when a file
    is missing (never unpickling anything first). ``check_md5`` (on by default) verifies
    every file against the official checksums before torchvision unpickles it, downloaded
    or not; a file that does not match is an error naming it."""
    base = _root(root)
    folder = base / "cifar-10-batches-py"
    missing = _missing(folder, _CIFAR10_FILES)
    if missing and not download:
        raise FileNotFoundError(
            f"CIFAR-10 is not in {folder.resolve()}: missing {', '.join(missing)}. Pass "
            f'dataset_kwargs={{"root": "{base}", "download": true}} to download it there '
            "(about 170 MB), or unpack cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html into that root"
        )
    if missing:
        # Not through torchvision's CIFAR10(download=True): constructing it unpickles the
        # batch files, before they could be checked. Only the archive is fetched (its md5
        # checked by torchvision) and unpacked; the files are checked below, then read.
        import torchvision
        from torchvision.datasets.utils import download_and_extract_archive

        stock = torchvision.datasets.CIFAR10
        download_and_extract_archive(
            stock.url, str(base), filename=stock.filename, md5=stock.tgz_md5
        )
        missing = _missing(folder, _CIFAR10_FILES)
        if missing:
            raise FileNotFoundError(
                f"CIFAR-10 was downloaded from {stock.url} into {base.resolve()}, but "
                f"{folder.resolve()} still lacks {', '.join(missing)}"
            )
    cls = _cifar10_files()
    if check_md5:
        _check_cifar10_md5(folder)
    splits = []
    for train in (True, False):
        data = cls(str(base), train=train, download=False)
        images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()
        splits.append((images, torch.tensor(data.targets, dtype=torch.long)))
    (images, labels), (test_images, test_labels) = splits
    train_index, valid_index = stratified_split(labels, valid_size, seed)
    stats = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}
    return (
        TensorPairs(images[train_index], labels[train_index], **stats),
        TensorPairs(images[valid_index], labels[valid_index], **stats),
        TensorPairs(test_images, test_labels, **stats),
    )


@_cached
def fake(
    *,
    size: int = 1000,
    valid_size: int = 200,
    image_size: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    seed: int = 0,
) -> Splits:
    """torchvision's ``FakeData``: ``size`` training and ``valid_size`` validation images of
    ``image_size`` (channels, height, width) with random labels; the same for a ``seed``."""
    import torchvision
    from torchvision.transforms import PILToTensor

    splits = []
    for count, offset in ((size, seed * 1_000_003), (valid_size, seed * 1_000_003 + size)):
        data = torchvision.datasets.FakeData(
            size=count,
            image_size=tuple(image_size),
            num_classes=num_classes,
            transform=PILToTensor(),
            random_offset=offset,
        )
        items = [data[i] for i in range(count)]
        images = torch.stack([image for image, _ in items])
        labels = torch.tensor([int(label) for _, label in items], dtype=torch.long)
        channels = image_size[0]
        splits.append(TensorPairs(images, labels, mean=[0.5] * channels, std=[0.25] * channels))
    return splits[0], splits[1]


#: Every dataset this plugin registers, by name.
DATASETS: dict[str, Callable[..., Splits | TestSplits]] = {
    "digits": digits,
    "diabetes": diabetes,
    "mnist": mnist,
    "fashion_mnist": fashion_mnist,
    "cifar10": cifar10,
    "fake": fake,
}
