"""Datasets by name: scikit-learn's bundled ones, and torchvision's read from small files this
test writes in the real on-disk formats (MNIST's idx files, CIFAR-10's python batches)."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import nastrain
from nastrain_classic import datasets


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Each test reads its files itself (the factories cache per process)."""
    for factory in datasets.DATASETS.values():
        factory.cache.clear()


def test_the_plugin_registers_its_datasets_through_the_hook() -> None:
    assert {"digits", "diabetes", "mnist", "fashion_mnist", "cifar10", "fake"} <= set(
        nastrain.dataset_names()
    )
    assert nastrain.get_dataset("fashion_mnist") is datasets.fashion_mnist


def test_digits_are_split_reproducibly_by_seed() -> None:
    train, valid = datasets.digits()
    assert len(train) + len(valid) == 1797 and len(valid) == 359
    images, labels = train.batch(torch.arange(len(train)))
    assert images.shape == (1438, 1, 8, 8) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert set(labels.tolist()) == set(range(10))
    # Disjoint: no validation image is also a training image.
    train_rows = {tuple(row) for row in images.flatten(1).tolist()}
    valid_images, _ = valid.batch(torch.arange(len(valid)))
    overlap = sum(tuple(row) in train_rows for row in valid_images.flatten(1).tolist())
    assert overlap <= 2  # the bundled data holds a couple of identical images
    datasets.digits.cache.clear()
    again, _ = datasets.digits()
    assert torch.equal(again.inputs, train.inputs)
    other, _ = datasets.digits(seed=1)
    assert not torch.equal(other.inputs, train.inputs)
    x, y = train[5]
    assert x.shape == (1, 8, 8) and int(y) == int(labels[5])


def test_diabetes_is_standardized_on_its_training_split() -> None:
    train, valid = datasets.diabetes(valid_fraction=0.25)
    assert len(train) == 332 and len(valid) == 110
    assert train.inputs.shape == (332, 10) and train.targets.shape == (332, 1)
    assert torch.allclose(train.inputs.mean(0), torch.zeros(10), atol=1e-5)
    assert torch.allclose(train.targets.std(), torch.tensor(1.0), atol=1e-5)
    with pytest.raises(ValueError, match="valid_fraction must be between 0 and 1, got 1.5"):
        datasets.diabetes(valid_fraction=1.5)


def _idx_images(path: Path, images: np.ndarray) -> None:
    # http://yann.lecun.com/exdb/mnist/: magic 0x00000803 (unsigned bytes, 3 dimensions)
    n, rows, cols = images.shape
    path.write_bytes(struct.pack(">IIII", 0x803, n, rows, cols) + images.astype(np.uint8).tobytes())


def _idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


def _write_mnist(raw: Path, n_train: int = 20, n_test: int = 5) -> tuple[np.ndarray, ...]:
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (n_train, 28, 28))
    train_y = np.arange(n_train) % 10
    test_x = rng.integers(0, 256, (n_test, 28, 28))
    test_y = (np.arange(n_test) + 3) % 10
    _idx_images(raw / "train-images-idx3-ubyte", train_x)
    _idx_labels(raw / "train-labels-idx1-ubyte", train_y)
    _idx_images(raw / "t10k-images-idx3-ubyte", test_x)
    _idx_labels(raw / "t10k-labels-idx1-ubyte", test_y)
    return train_x, train_y, test_x, test_y


def _rows(split: datasets.TensorPairs) -> list[tuple]:
    return [tuple(row) for row in split.inputs.flatten(1).tolist()]


@pytest.mark.parametrize(
    ("name", "folder", "mean", "std"),
    [("mnist", "MNIST", 0.1307, 0.3081), ("fashion_mnist", "FashionMNIST", 0.2860, 0.3530)],
)
def test_mnist_and_fashion_mnist_read_idx_files_from_root(tmp_path, name, folder, mean, std):
    train_x, train_y, test_x, test_y = _write_mnist(tmp_path / folder / "raw")
    train, valid, test = nastrain.get_dataset(name)(root=str(tmp_path), valid_size=10)
    # The validation set is carved out of the official training split, one image per class
    # (stratified); the official test split is the third split, apart from both.
    assert (len(train), len(valid), len(test)) == (10, 10, 5)
    assert sorted(valid.targets.tolist()) == list(range(10))
    assert sorted(train.targets.tolist()) == list(range(10))
    official = [tuple(row) for row in train_x.reshape(20, -1).tolist()]
    assert sorted(_rows(train) + _rows(valid)) == sorted(official)
    first = official.index(_rows(train)[0])
    assert int(train.targets[0]) == train_y[first]
    images, _ = train.batch(torch.arange(10))
    assert images.shape == (10, 1, 28, 28)
    expected = (train_x[first, 7, 9] / 255.0 - mean) / std
    assert float(images[0, 0, 7, 9]) == pytest.approx(expected, abs=1e-5)
    test_images, test_labels = test.batch(torch.arange(5))
    assert test_labels.tolist() == test_y.tolist()
    expected = (test_x[4, 27, 0] / 255.0 - mean) / std
    assert float(test_images[4, 0, 27, 0]) == pytest.approx(expected, abs=1e-5)
    # The seed chooses which images of each class are held out.
    _, other, _ = nastrain.get_dataset(name)(root=str(tmp_path), valid_size=10, seed=1)
    assert sorted(other.targets.tolist()) == list(range(10))
    assert set(_rows(other)) != set(_rows(valid))
    with pytest.raises(ValueError, match=r"valid_size must be an integer between 1 and 19 .*5000"):
        nastrain.get_dataset(name)(root=str(tmp_path))


def test_a_stratified_split_keeps_each_class_share() -> None:
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    train, valid = datasets.stratified_split(labels, 20, seed=0)
    assert len(valid) == 20 and len(train) == 80
    assert torch.bincount(labels[valid]).tolist() == [12, 6, 2]
    assert sorted(torch.cat([train, valid]).tolist()) == list(range(100))
    again, same = datasets.stratified_split(labels, 20, seed=0)
    assert torch.equal(same, valid) and torch.equal(again, train)
    assert not torch.equal(datasets.stratified_split(labels, 20, seed=1)[1], valid)
    # 7 of 3 classes of sizes 60/30/10: 4.2, 2.1, 0.7 round by largest remainder to 4, 2, 1.
    assert torch.bincount(labels[datasets.stratified_split(labels, 7, 0)[1]]).tolist() == [4, 2, 1]
    with pytest.raises(ValueError, match="seed must be an integer, got '0'"):
        datasets.stratified_split(labels, 7, "0")


def test_mnist_root_defaults_to_the_environment(tmp_path, monkeypatch) -> None:
    _write_mnist(tmp_path / "MNIST" / "raw")
    monkeypatch.setenv("NASTRAIN_DATA", str(tmp_path))
    train, _, _ = datasets.mnist(valid_size=4)
    assert len(train) == 16


@pytest.mark.parametrize(
    ("name", "where", "what"),
    [
        ("mnist", "MNIST/raw", "train-images-idx3-ubyte"),
        ("fashion_mnist", "FashionMNIST/raw", "t10k-labels-idx1-ubyte"),
        ("cifar10", "cifar-10-batches-py", "data_batch_1"),
    ],
)
def test_missing_files_say_where_they_were_looked_for_and_how_to_get_them(
    tmp_path, name, where, what
) -> None:
    with pytest.raises(FileNotFoundError) as error:
        nastrain.get_dataset(name)(root=str(tmp_path / "nowhere"))
    message = str(error.value)
    assert str((tmp_path / "nowhere" / where).resolve()) in message
    assert what in message and '"download": true' in message
    assert not (tmp_path / "nowhere").exists()  # download is off by default: nothing fetched


def _cifar_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    # https://www.cs.toronto.edu/~kriz/cifar.html: each batch is a pickled dict whose "data"
    # is an N x 3072 uint8 array (the red, green, then blue 32x32 planes, row-major) and
    # whose "labels" is a list of N labels. This is the format torchvision reads.
    data = images.reshape(len(images), 3 * 32 * 32).astype(np.uint8)
    with path.open("wb") as handle:
        pickle.dump({"data": data, "labels": labels}, handle, protocol=2)


def _write_cifar10(folder: Path) -> tuple[list[np.ndarray], np.ndarray]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (2, 3, 32, 32)) for _ in range(5)]
    for i, images in enumerate(batches, 1):
        _cifar_batch(folder / f"data_batch_{i}", images, [i, (i + 5) % 10])
    test_images = rng.integers(0, 256, (3, 3, 32, 32))
    _cifar_batch(folder / "test_batch", test_images, [7, 8, 9])
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle, protocol=2)
    return batches, test_images


def test_cifar10_reads_python_batches_from_root(tmp_path) -> None:
    batches, test_images = _write_cifar10(tmp_path / "cifar-10-batches-py")
    train, valid, test = datasets.cifar10(root=str(tmp_path), check_md5=False, valid_size=5)
    # Labels of the five batches: 1, 6, 2, 7, 3, 8, 4, 9, 5, 0 (one image per class); half
    # of each class's share (0.5 image) rounds up for the first five classes.
    assert (len(train), len(valid), len(test)) == (5, 5, 3)
    assert valid.targets.tolist() == [1, 2, 3, 4, 0]  # in the batches' order
    assert train.targets.tolist() == [6, 7, 8, 9, 5]
    images, _ = train.batch(torch.arange(5))
    assert images.shape == (5, 3, 32, 32)
    # Channel 2 (blue), row 5, column 11 of the first training image (batch 1's second).
    expected = (batches[0][1, 2, 5, 11] / 255.0 - 0.4465) / 0.2616
    assert float(images[0, 2, 5, 11]) == pytest.approx(expected, abs=1e-5)
    test_batch, test_labels = test.batch(torch.arange(3))
    assert test_labels.tolist() == [7, 8, 9]
    expected = (test_images[2, 0, 31, 0] / 255.0 - 0.4914) / 0.2470
    assert float(test_batch[2, 0, 31, 0]) == pytest.approx(expected, abs=1e-5)


def _fake_download(monkeypatch, fetch) -> list:
    """Replace torchvision's download_and_extract_archive (wherever it is called from) by
    ``fetch(root)``; returns the calls' arguments."""
    import torchvision.datasets.cifar
    import torchvision.datasets.utils

    calls: list = []

    def download_and_extract_archive(url, download_root, filename=None, md5=None, **kwargs):
        calls.append((url, download_root, filename, md5))
        fetch(Path(download_root))

    for module in (torchvision.datasets.utils, torchvision.datasets.cifar):
        monkeypatch.setattr(module, "download_and_extract_archive", download_and_extract_archive)
    return calls


def _hostile_cifar10(folder: Path, marker: Path) -> None:
    _write_cifar10(folder)
    (folder / "data_batch_1").write_bytes(
        pickle.dumps(_Touch(str(marker)), protocol=2)  # a hostile batch
    )


@pytest.mark.parametrize("download", [False, True])
def test_cifar10_checks_its_files_md5_by_default_naming_the_file(
    tmp_path, monkeypatch, download
) -> None:
    # torchvision unpickles these files: ones that are not the official files are refused
    # before anything is unpickled, naming the first that does not match; also with
    # download=True, which downloads nothing here since every file is there.
    folder = tmp_path / "cifar-10-batches-py"
    marker = tmp_path / "unpickled"
    _hostile_cifar10(folder, marker)
    calls = _fake_download(monkeypatch, lambda root: pytest.fail("downloaded files it had"))
    with pytest.raises(ValueError) as error:
        datasets.cifar10(root=str(tmp_path), valid_size=5, download=download)
    message = str(error.value)
    assert str(folder / "data_batch_1") in message and "c99cafc152244af753f735de768cd75f" in message
    assert '"check_md5": false' in message
    assert not marker.exists()
    assert calls == []


def test_cifar10_download_fetches_only_the_archive_then_checks_its_files(
    tmp_path, monkeypatch
) -> None:
    # download=True fetches and unpacks torchvision's archive (md5-checked by torchvision),
    # then checks every file before anything is unpickled: a hostile file in the archive
    # is refused, naming it.
    import torchvision

    folder = tmp_path / "cifar-10-batches-py"
    marker = tmp_path / "unpickled"
    calls = _fake_download(monkeypatch, lambda root: _hostile_cifar10(folder, marker))
    with pytest.raises(ValueError, match="data_batch_1 has md5"):
        datasets.cifar10(root=str(tmp_path), valid_size=5, download=True)
    assert not marker.exists()
    stock = torchvision.datasets.CIFAR10
    assert calls == [(stock.url, str(tmp_path), stock.filename, stock.tgz_md5)]


def test_cifar10_download_of_an_archive_without_the_files_names_what_is_missing(
    tmp_path, monkeypatch
) -> None:
    _fake_download(monkeypatch, lambda root: None)
    with pytest.raises(FileNotFoundError, match="still lacks data_batch_1, data_batch_2"):
        datasets.cifar10(root=str(tmp_path), download=True)


class _Touch:
    """Unpickling it creates a file (what a hostile pickle could do)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_fake_data_is_torchvisions_fakedata_and_reproducible() -> None:
    train, valid = datasets.fake(size=6, valid_size=3, image_size=[1, 5, 4], num_classes=3)
    assert (len(train), len(valid)) == (6, 3)
    images, labels = train.batch(torch.arange(6))
    assert images.shape == (6, 1, 5, 4) and set(labels.tolist()) <= {0, 1, 2}
    datasets.fake.cache.clear()
    again, _ = datasets.fake(size=6, valid_size=3, image_size=[1, 5, 4], num_classes=3)
    assert torch.equal(again.inputs, train.inputs)
    other, _ = datasets.fake(size=6, valid_size=3, image_size=[1, 5, 4], num_classes=3, seed=1)
    assert not torch.equal(other.inputs, train.inputs)
    assert not torch.equal(valid.inputs, train.inputs[:3])
