"""Classic trainers for nastrain's multi-trial experiments.

``ClassificationTrainer`` and ``RegressionTrainer`` (registered as
``classification`` and ``regression``) train one fixed model on a dataset
named in JSON, with an optimizer and a learning-rate schedule named in JSON,
and report the validation metrics after every epoch. The datasets (``digits``,
``diabetes``, ``mnist``, ``fashion_mnist``, ``cifar10``, ``fake``) are
registered through the ``nastrain_register_datasets`` hook, so other plugins
can add theirs. The validation set that strategies select by is carved out of
each dataset's training split; an official test split (``mnist``,
``fashion_mnist``, ``cifar10``) is only reported, under ``test_*`` keys.
"""

from nastrain_classic.datasets import (
    TensorPairs,
    cifar10,
    diabetes,
    digits,
    fake,
    fashion_mnist,
    mnist,
    stratified_split,
)
from nastrain_classic.trainers import (
    OPTIMIZERS,
    SCHEDULES,
    ClassificationTrainer,
    RegressionTrainer,
)

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "ClassificationTrainer",
    "RegressionTrainer",
    "TensorPairs",
    "cifar10",
    "diabetes",
    "digits",
    "fake",
    "fashion_mnist",
    "mnist",
    "stratified_split",
]
