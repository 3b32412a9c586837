"""DARTS for nastrain: the differentiable one-shot trainer and the DARTS CNN search space.

``from nastrain_darts import DartsTrainer`` takes NNI's legacy DartsTrainer
arguments; the plugin registers it as ``darts`` through its entry point.
``DartsSpace`` is the paper's CNN search space and ``genotype`` prints an
exported architecture of it the way the paper does.
"""

from nastrain_darts.spaces import DartsSpace, Genotype, darts_cnn_space, genotype
from nastrain_darts.trainer import ArchParameters, DartsInputChoice, DartsLayerChoice, DartsTrainer

__all__ = [
    "ArchParameters",
    "DartsInputChoice",
    "DartsLayerChoice",
    "DartsSpace",
    "DartsTrainer",
    "Genotype",
    "darts_cnn_space",
    "genotype",
]
