"""Sampling-based one-shot search for nastrain: ENAS (an LSTM controller trained with
REINFORCE) and random one-shot (single-path, uniform sampling; SPOS).

``from nastrain_enas import EnasTrainer`` takes NNI's legacy EnasTrainer arguments;
the plugin registers it as ``enas``, and ``RandomOneShotTrainer`` as ``random``
(alias ``spos``), through its entry point.
"""

from nastrain_enas.controller import Controller, ControllerSample
from nastrain_enas.enas import EnasTrainer
from nastrain_enas.sampling import SampledInputChoice, SampledLayerChoice, SamplingTrainer
from nastrain_enas.spos import RandomOneShotTrainer

__all__ = [
    "Controller",
    "ControllerSample",
    "EnasTrainer",
    "RandomOneShotTrainer",
    "SampledInputChoice",
    "SampledLayerChoice",
    "SamplingTrainer",
]
