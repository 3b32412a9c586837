"""DARTS for nastrain: the differentiable one-shot trainer and the DARTS CNN search space.

``from nastrain_darts import DartsTrainer`` takes NNI's legacy DartsTrainer
arguments; the plugin registers it as ``darts`` through its entry point.
"""

from nastrain_darts.trainer import ArchParameters, DartsInputChoice, DartsLayerChoice, DartsTrainer

__all__ = ["ArchParameters", "DartsInputChoice", "DartsLayerChoice", "DartsTrainer"]
