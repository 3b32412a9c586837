"""ENAS's LSTM controller (Pham et al., ICML 2018, sections 2.1-2.3): it samples an
architecture one decision after another, scores one (``log_prob``), or decodes one
greedily, and computes the skip penalty.

Its sampling is written for speed: every decision's random numbers are drawn in one call
(the Gumbel-max trick), the distributions of all decisions are one padded matrix, and an
``InputChoice`` with ``n_chosen = k`` is one categorical over its ``C(n, k)`` sets through
a membership matrix. :class:`nastrain_enas.EnasTrainer` trains it with REINFORCE.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from nastrain.space import Architecture, Choice

__all__ = ["CONTROLLER_KWARGS", "MAX_SUBSETS", "Controller", "ControllerSample"]

#: More sets than this for one InputChoice (C(n_candidates, n_chosen)) is refused.
MAX_SUBSETS = 1 << 20

CONTROLLER_KWARGS = ("lstm_size", "lstm_num_layers", "tanh_constant", "temperature", "skip_target")


@attrs.frozen
class ControllerSample:
    """One architecture drawn (or decoded, or scored) by the :class:`Controller`.

    ``log_prob`` is log P(arch) under the controller, ``entropy`` the sum of the
    entropies of the decisions' distributions along the way, ``skip_penalty`` the
    KL skip penalty (zero unless asked for); all are scalar tensors. ``probabilities``
    holds those distributions, one row per decision (in :attr:`Controller.decisions`'
    order, padded with zeros), when they were computed (``None`` when neither ``stats``
    nor ``skip_penalty`` asked for them).
    """

    arch: Architecture
    log_prob: torch.Tensor
    entropy: torch.Tensor
    skip_penalty: torch.Tensor
    probabilities: torch.Tensor | None = None


class _Decision:
    """How the controller encodes one decision: its logits, and the values they index."""

    def __init__(self, position: int, choice: Choice) -> None:
        self.position = position  # its step: the number of decisions before it
        self.choice = choice
        self.label = choice.label
        self.subsets: list[tuple[int, ...]] | None = None
        #: A value's row: by candidate name, or by the tuple of chosen input indices.
        self.index: dict[Any, int]
        if choice.kind == "layer":
            self.n_logits = len(choice.names)
            self.values: list[Any] = list(choice.names)
            self.index = {name: i for i, name in enumerate(choice.names)}
        else:
            self.n_logits = choice.n_candidates
            if choice.n_chosen == 1:
                self.values = [[i] for i in range(choice.n_candidates)]
                self.index = {(i,): i for i in range(choice.n_candidates)}
            else:
                self.subsets = list(
                    itertools.combinations(range(choice.n_candidates), choice.n_chosen)
                )
                self.values = [list(s) for s in self.subsets]
                self.index = {s: i for i, s in enumerate(self.subsets)}
        self.n_values = len(self.values)  # the length of its row of logits

    def index_of(self, value: Any) -> int:
        """The index of an architecture's value for this decision."""
        key = value if self.choice.kind == "layer" else tuple(self.choice.validate(value))
        return self.index[key]


class Controller(nn.Module):
    """ENAS's LSTM controller over the decisions of a search space.

    It walks the ``choices`` (one per label) in order. At each decision the LSTM
    (``lstm_num_layers`` layers of ``lstm_size`` units, bias-free) steps once on the
    previous decision's output (a learned start vector ``g_emb`` first), and the
    decision's logits are read off the last hidden state ``h_t``:

    - a ``LayerChoice``: a linear layer of ``h_t``, one logit per candidate; the next
      input is the chosen candidate's embedding;
    - an ``InputChoice``: the paper's attention over earlier decisions' hidden states
      (its anchors, §2.2 and §2.3 of Pham et al.): input ``i`` has the logit
      ``v^T tanh(W_prev h_a(i) + W_curr h_t)``, with ``W_prev``, ``W_curr`` and ``v``
      shared by every input choice. The anchor ``h_a(i)`` of input ``i`` of a choice
      with ``n`` inputs is the hidden state of the ``n - i``-th decision before it (the
      last ``n`` decisions, oldest first): in a DARTS cell, where node ``j``'s edges
      from states ``0 .. j-1`` come just before its input choice, input ``i``'s
      anchor is the decision of the edge from state ``i``. Inputs with no decision
      that far back are anchored at learned start anchors. The next input is the
      mean of the chosen inputs' anchors.

    Logits are divided by ``temperature`` and squashed to ``tanh_constant *
    tanh(logits)`` when those are set (the paper's tricks against early collapse).
    An ``InputChoice``'s value is a set of exactly ``n_chosen`` inputs, with
    probability proportional to the exponential of the sum of their logits. A
    decision with a single possible value takes no step.

    ``skip_target`` is the prior probability of an input being chosen that the
    skip penalty measures against (see :meth:`sample`). Parameters start uniform
    in [-0.1, 0.1], as in the ENAS authors' code.
    """

    #: Where the rows of :meth:`sample`'s padded logits are padding (a buffer).
    _padding: torch.Tensor

    def __init__(
        self,
        choices: Sequence[Choice],
        *,
        lstm_size: int = 64,
        lstm_num_layers: int = 1,
        tanh_constant: float | None = 1.5,
        temperature: float | None = None,
        skip_target: float = 0.4,
    ) -> None:
        super().__init__()
        for name, value in (("lstm_size", lstm_size), ("lstm_num_layers", lstm_num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"controller {name} must be an int >= 1, got {value!r}")
        for name, number in (("tanh_constant", tanh_constant), ("temperature", temperature)):
            if number is not None and (not isinstance(number, (int, float)) or not number > 0):
                raise ValueError(f"controller {name} must be a number > 0 or None, got {number!r}")
        if not isinstance(skip_target, (int, float)) or not 0 < skip_target < 1:
            raise ValueError(f"controller skip_target must be in (0, 1), got {skip_target!r}")
        self.choices = tuple(choices)
        self.lstm_size = lstm_size
        self.tanh_constant = tanh_constant
        self.temperature = temperature
        self.skip_target = float(skip_target)
        self.lstm = nn.ModuleList(
            nn.LSTMCell(lstm_size, lstm_size, bias=False) for _ in range(lstm_num_layers)
        )
        self.g_emb = nn.Parameter(torch.empty(1, lstm_size))
        #: A LayerChoice decision's readout and embeddings, by its position (as a str).
        self.soft = nn.ModuleDict()
        self.embedding = nn.ModuleDict()
        self.decisions: list[_Decision] = []
        #: Every decision's only value, for the decisions that have one (no step taken).
        self.fixed: dict[str, Any] = {}
        missing = 0  # the most inputs of one InputChoice without an earlier decision
        for choice in self.choices:
            if choice.size == 1:
                self.fixed[choice.label] = next(choice.values())
                continue
            if choice.size > MAX_SUBSETS:
                raise ValueError(
                    f"InputChoice {choice.label!r} has C({choice.n_candidates}, "
                    f"{choice.n_chosen}) = {choice.size} input sets, more than the ENAS "
                    f"controller enumerates ({MAX_SUBSETS}); choose fewer inputs per set"
                )
            decision = _Decision(len(self.decisions), choice)
            self.decisions.append(decision)
            key = str(decision.position)
            if choice.kind == "layer":
                self.soft[key] = nn.Linear(lstm_size, decision.n_logits, bias=False)
                self.embedding[key] = nn.Embedding(decision.n_logits, lstm_size)
            else:
                missing = max(missing, decision.n_logits - decision.position)
            if decision.subsets is not None:
                members = torch.zeros(len(decision.subsets), decision.n_logits)
                for row, subset in enumerate(decision.subsets):
                    members[row, list(subset)] = 1.0
                # Derived from the space, so not part of the state dict.
                self.register_buffer(f"members{decision.position}", members, persistent=False)
        self.attention: nn.ModuleDict | None = None
        if any(d.choice.kind != "layer" for d in self.decisions):
            self.attention = nn.ModuleDict(
                {
                    "w_prev": nn.Linear(lstm_size, lstm_size, bias=False),
                    "w_curr": nn.Linear(lstm_size, lstm_size, bias=False),
                    "v": nn.Linear(lstm_size, 1, bias=False),
                }
            )
        #: The anchors of inputs that no earlier decision stands for (oldest first), or
        #: ``None`` when every input has one.
        self.start_anchors: nn.Parameter | None = None
        if missing:
            self.start_anchors = nn.Parameter(torch.empty(missing, lstm_size))
        width = max((d.n_values for d in self.decisions), default=0)
        padding = torch.ones(len(self.decisions), width, dtype=torch.bool)
        for decision in self.decisions:
            padding[decision.position, : decision.n_values] = False
        # Where the rows of sample()'s padded logits are padding.
        self.register_buffer("_padding", padding, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every parameter uniform in [-0.1, 0.1]."""
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -0.1, 0.1)

    def _members(self, decision: _Decision) -> torch.Tensor:
        return getattr(self, f"members{decision.position}")

    def _squash(self, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature is not None:
            logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant * torch.tanh(logits)
        return logits

    def _anchors(self, decision: _Decision, states: list[torch.Tensor]) -> torch.Tensor:
        """The anchors of an InputChoice's inputs, one row each: the hidden states of the
        last ``n`` decisions before it, oldest first, start anchors where there are fewer."""
        n = decision.n_logits
        missing = max(0, n - len(states))
        rows = states[len(states) - (n - missing) :]
        if missing:
            assert self.start_anchors is not None
            rows = [self.start_anchors[:missing], *rows]
        return torch.cat(rows)

    def sample(
        self,
        *,
        greedy: bool = False,
        arch: Mapping[str, Any] | None = None,
        skip_penalty: bool = False,
        stats: bool = True,
        generator: torch.Generator | None = None,
    ) -> ControllerSample:
        """Draw an architecture, decode one greedily (``greedy``) or score ``arch``.

        Greedy decoding takes, at each decision, its most likely value given the
        values already taken; that is not in general the most likely architecture.
        Runs under the caller's grad mode: with gradients on, ``log_prob`` and
        ``skip_penalty`` are differentiable in the controller's parameters.
        ``skip_penalty`` computes, for every ``InputChoice`` with ``1 < n_chosen <
        n_candidates``, sum_i KL(Bernoulli(pi_i) || Bernoulli(skip_target)), where
        pi_i is the probability that input i is among the chosen. ``stats=False``
        skips log-probability and entropy (they come back as zeros): sampling only.
        A draw takes its random numbers from ``generator`` (default: torch's global
        generator), on the controller's device.
        """
        device = self.g_emb.device
        zero = torch.zeros((), device=device)
        hidden = [torch.zeros(1, self.lstm_size, device=device) for _ in self.lstm]
        cell = [torch.zeros(1, self.lstm_size, device=device) for _ in self.lstm]
        forced = None
        if arch is not None:
            forced = torch.tensor(
                [d.index_of(arch[d.label]) for d in self.decisions], device=device
            )
        noise = None
        if forced is None and not greedy:
            # Gumbel-max: argmax(logits + g), g = -log(e) with e ~ Exp(1), is a draw from
            # softmax(logits); all the noise in one call, not one sampler call per decision.
            noise = (
                torch.empty(self._padding.shape, device=device)
                .exponential_(generator=generator)
                .log_()
            )
        x: torch.Tensor = self.g_emb
        states: list[torch.Tensor] = []  # the last hidden state at each decision
        all_logits: list[torch.Tensor] = []
        picks: list[torch.Tensor] = []
        for i, decision in enumerate(self.decisions):
            for layer, lstm in enumerate(self.lstm):
                hidden[layer], cell[layer] = lstm(x, (hidden[layer], cell[layer]))
                x = hidden[layer]
            key = str(decision.position)
            anchors = None
            if decision.choice.kind == "layer":
                logits = self._squash(self.soft[key](x).view(-1))
            else:
                assert self.attention is not None
                anchors = self._anchors(decision, states)
                attention = self.attention
                query = torch.tanh(attention["w_prev"](anchors) + attention["w_curr"](x))
                logits = self._squash(attention["v"](query).view(-1))
            states.append(x)
            if decision.subsets is not None:
                # A set's logit: the sum of its inputs' logits.
                logits = self._members(decision) @ logits
            all_logits.append(logits)
            if forced is not None:
                pick = forced[i]
            elif greedy:
                pick = logits.detach().argmax()
            else:
                assert noise is not None
                pick = (logits.detach() - noise[i, : decision.n_values]).argmax()
            picks.append(pick)
            if anchors is None:
                x = cast(nn.Embedding, self.embedding[key]).weight[pick].view(1, -1)
            elif decision.subsets is None:
                x = anchors[pick].view(1, -1)
            else:  # the mean of the chosen inputs' anchors
                x = (self._members(decision)[pick] @ anchors).view(1, -1) / decision.choice.n_chosen
        log_prob, entropy, penalty = zero, zero, zero
        p = None
        if self.decisions and (stats or skip_penalty):
            # Every decision's distribution at once: one row each, padded with -inf.
            log_p = F.log_softmax(
                nn.utils.rnn.pad_sequence(all_logits, batch_first=True, padding_value=-math.inf),
                -1,
            )
            p = log_p.exp()
            if stats:
                log_prob = log_p.gather(1, torch.stack(picks).view(-1, 1)).sum()
                entropy = -(p * log_p.masked_fill(self._padding, 0.0)).sum()
            if skip_penalty:
                penalty = self._skip_penalty(p)
        indices = torch.stack(picks).tolist() if picks else []
        result: Architecture = {}
        for choice in self.choices:
            result[choice.label] = self.fixed.get(choice.label)
        for decision, index in zip(self.decisions, indices):
            value = decision.values[index]
            result[decision.label] = list(value) if isinstance(value, list) else value
        return ControllerSample(result, log_prob, entropy, penalty, p)

    def greedy_distributions(self) -> dict[str, tuple[list[float], float]]:
        """Each decision's distribution along the greedy path (the distribution the
        controller gives a decision when every earlier decision took its most likely
        value), by label, in the space's order: the probability of each candidate of a
        LayerChoice, or of each input of an InputChoice being among the chosen (summing to
        ``n_chosen``), and the entropy in nats of the decision's distribution over its
        values (over the ``C(n, k)`` sets of an InputChoice choosing ``k > 1``). A decision
        with one possible value: probability 1 for it, entropy 0. No gradient, no random
        draw."""
        with torch.no_grad():
            sample = self.sample(greedy=True)
            found: dict[str, tuple[list[float], float]] = {}
            for decision in self.decisions:
                assert sample.probabilities is not None  # computed with stats
                row = sample.probabilities[decision.position, : decision.n_values]
                entropy = -torch.xlogy(row, row).sum().item()
                per_input = row @ self._members(decision) if decision.subsets is not None else row
                found[decision.label] = (per_input.tolist(), entropy)
        ordered: dict[str, tuple[list[float], float]] = {}
        for choice in self.choices:
            if choice.label in found:
                ordered[choice.label] = found[choice.label]
                continue
            value = self.fixed[choice.label]
            if choice.kind == "layer":
                ordered[choice.label] = ([1.0 if n == value else 0.0 for n in choice.names], 0.0)
            else:
                chosen = set(value)
                probs = [1.0 if i in chosen else 0.0 for i in range(choice.n_candidates)]
                ordered[choice.label] = (probs, 0.0)
        return ordered

    def _skip_penalty(self, p: torch.Tensor) -> torch.Tensor:
        """sum_i KL(Bernoulli(pi_i) || Bernoulli(skip_target)) over the inputs of the
        multi-input choices, pi_i = P(input i is chosen); ``p`` holds each decision's
        probabilities (one row per decision)."""
        penalty = torch.zeros((), device=p.device)
        rho = self.skip_target
        for decision in self.decisions:
            if decision.subsets is None:
                continue
            members = self._members(decision)
            # Kept in [0, 1] against rounding.
            chosen = (p[decision.position, : len(members)] @ members).clamp(0.0, 1.0)
            kl = torch.xlogy(chosen, chosen / rho) + torch.xlogy(
                1 - chosen, (1 - chosen) / (1 - rho)
            )
            penalty = penalty + kl.sum()
        return penalty

    def log_prob(self, arch: Mapping[str, Any]) -> torch.Tensor:
        """log P(arch) under the controller (differentiable)."""
        return self.sample(arch=arch).log_prob
