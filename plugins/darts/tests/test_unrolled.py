"""The second-order (unrolled) architecture gradient against an exact one from autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import TensorDataset

import nastrain
from nastrain_darts import DartsTrainer


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.op = nastrain.LayerChoice(
            {"a": nn.Linear(3, 3), "b": nn.Sequential(nn.Linear(3, 3), nn.Tanh()), "c": nn.Tanh()},
            label="op",
        )
        self.pick = nastrain.InputChoice(2, 1, label="pick")
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        h = self.op(x)
        return self.head(self.pick([h, torch.sin(x)]))


def make_trainer(
    xi: float, momentum: float = 0.0, decay: float = 0.0
) -> tuple[DartsTrainer, tuple]:
    torch.manual_seed(0)
    x = torch.randn(32, 3, dtype=torch.float64)
    y = (x.sum(1) > 0).long()
    model = Tiny().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=xi, momentum=momentum, weight_decay=decay)
    trainer = DartsTrainer(
        model, nn.CrossEntropyLoss(), None, optimizer, 1, TensorDataset(x, y), unrolled=True, seed=0
    )
    with torch.no_grad():  # alphas away from uniform, so the gradient is not degenerate
        for alpha in trainer.arch.parameters():
            alpha.copy_(torch.randn_like(alpha))
    return trainer, (x[:16], y[:16], x[16:], y[16:])


def exact_gradient(trainer: DartsTrainer, data: tuple, xi: float, decay: float = 0.0) -> list:
    """d/dalpha L_val(w - xi * (dL_train(w, alpha)/dw + decay * w), alpha), by autograd."""
    trn_x, trn_y, val_x, val_y = data
    model, loss = trainer.model, trainer.loss
    params = dict(model.named_parameters())
    train_loss = loss(functional_call(model, params, (trn_x,)), trn_y)
    grads = torch.autograd.grad(train_loss, list(params.values()), create_graph=True)
    virtual = {name: p - xi * (g + decay * p) for (name, p), g in zip(params.items(), grads)}
    val_loss = loss(functional_call(model, virtual, (val_x,)), val_y)
    return list(torch.autograd.grad(val_loss, trainer.arch.parameters()))


def first_order_gradient(trainer: DartsTrainer, data: tuple) -> list:
    _, _, val_x, val_y = data
    val_loss = trainer.loss(trainer.model(val_x), val_y)
    return list(torch.autograd.grad(val_loss, trainer.arch.parameters()))


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def test_unrolled_gradient_matches_exact_second_order_gradient() -> None:
    xi = 0.5  # large, so the second-order term is far from negligible
    trainer, data = make_trainer(xi)
    before = [w.detach().clone() for w in trainer.weights]
    exact = flat(exact_gradient(trainer, data, xi))
    first = flat(first_order_gradient(trainer, data))
    trainer._unrolled_arch_gradient(*data)
    ours = flat(a.grad for a in trainer.arch.parameters())
    # The finite difference is central with eps = 0.01/||dw||, so its error is O(eps^2)
    # times third derivatives: 4e-6 relative here in float64. 1e-4 leaves a margin yet is
    # far below how much the first-order gradient differs (0.75 relative; checked below).
    assert torch.allclose(ours, exact, rtol=1e-4, atol=1e-7), (ours, exact)
    assert (first - exact).norm() > 100 * (ours - exact).norm()
    # The weights are back where they were (the virtual step is undone).
    assert all(torch.equal(w, b) for w, b in zip(trainer.weights, before))


def test_unrolled_gradient_includes_weight_decay_of_the_virtual_step() -> None:
    xi, decay = 0.3, 0.1
    trainer, data = make_trainer(xi, decay=decay)
    exact = flat(exact_gradient(trainer, data, xi, decay))
    trainer._unrolled_arch_gradient(*data)
    ours = flat(a.grad for a in trainer.arch.parameters())
    assert torch.allclose(ours, exact, rtol=1e-4, atol=1e-7)


# --- the virtual step as the weights' SGD takes it: groups, momentum buffers, nesterov --------


class TinyDropout(Tiny):
    """Tiny with dropout after the mixed op: every training pass draws a mask."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        h = self.drop(self.op(x))
        return self.head(self.pick([h, torch.sin(x)]))


def two_group_trainer(
    model: nn.Module, groups: list[dict], buffers: bool
) -> tuple[DartsTrainer, tuple]:
    """A trainer whose SGD has the mixed op's weights in one group and the head's in another
    (``groups`` gives each one's hyperparameters); with ``buffers``, momentum buffers exist."""
    torch.manual_seed(0)
    x = torch.randn(32, 3, dtype=torch.float64)
    y = (x.sum(1) > 0).long()
    model = model.double()
    params = [list(model.op.parameters()), list(model.head.parameters())]
    optimizer = torch.optim.SGD([{"params": p, **g} for p, g in zip(params, groups)], lr=0.1)
    if buffers:
        for p in model.parameters():
            optimizer.state[p]["momentum_buffer"] = torch.randn_like(p)
    trainer = DartsTrainer(
        model, nn.CrossEntropyLoss(), None, optimizer, 1, TensorDataset(x, y), unrolled=True, seed=0
    )
    with torch.no_grad():
        for alpha in trainer.arch.parameters():
            alpha.copy_(torch.randn_like(alpha))
    return trainer, (x[:16], y[:16], x[16:], y[16:])


def sgd_virtual_weights(trainer: DartsTrainer, params: dict, grads: list) -> dict:
    """w' as torch.optim.SGD.step would compute it (differentiable), from its param groups."""
    optimizer = trainer.optimizer
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    virtual = {}
    for (name, p), grad in zip(params.items(), grads):
        g = group_of[id(p)]
        d = (-grad if g["maximize"] else grad) + g["weight_decay"] * p
        if g["momentum"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            buf = d if buf is None else g["momentum"] * buf + (1 - g["dampening"]) * d
            d = d + g["momentum"] * buf if g["nesterov"] else buf
        virtual[name] = p - g["lr"] * d
    return virtual


def exact_sgd_gradient(trainer: DartsTrainer, data: tuple, rng: torch.Tensor | None = None):
    """d/dalpha L_val(w', alpha) by autograd, w' from SGD's update; with ``rng``, the training
    pass starts with torch's generator at that state and the validation pass follows it."""
    trn_x, trn_y, val_x, val_y = data
    model, loss = trainer.model, trainer.loss
    params = dict(model.named_parameters())
    if rng is not None:
        torch.set_rng_state(rng)
    train_loss = loss(functional_call(model, params, (trn_x,)), trn_y)
    grads = torch.autograd.grad(train_loss, list(params.values()), create_graph=True)
    virtual = sgd_virtual_weights(trainer, params, grads)
    val_loss = loss(functional_call(model, virtual, (val_x,)), val_y)
    return list(torch.autograd.grad(val_loss, trainer.arch.parameters()))


GROUPS = {
    # Two groups that differ in every hyperparameter of the virtual step.
    "momentum": [
        {"lr": 0.4, "momentum": 0.9, "weight_decay": 0.05},
        {"lr": 0.15, "momentum": 0.5, "dampening": 0.3, "weight_decay": 0.0},
    ],
    "nesterov": [
        {"lr": 0.3, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
        {"lr": 0.6, "momentum": 0.0, "weight_decay": 0.2},
    ],
    "maximize": [
        {"lr": 0.25, "momentum": 0.7, "dampening": 0.1, "maximize": True},
        {"lr": 0.5, "momentum": 0.8, "nesterov": True},
    ],
}


@pytest.mark.parametrize("buffers", [True, False], ids=["with-buffers", "first-step"])
@pytest.mark.parametrize("kind", sorted(GROUPS))
def test_unrolled_gradient_takes_each_groups_sgd_step_with_momentum_buffers(
    kind: str, buffers: bool
) -> None:
    trainer, data = two_group_trainer(Tiny(), GROUPS[kind], buffers)
    state = {p: dict(s) for p, s in trainer.optimizer.state.items()}
    before = [w.detach().clone() for w in trainer.weights]
    exact = flat(exact_sgd_gradient(trainer, data))
    # What today's code computed: one group's lr for every weight, no dampening or nesterov.
    first = flat(first_order_gradient(trainer, data))
    trainer._unrolled_arch_gradient(*data)
    ours = flat(a.grad for a in trainer.arch.parameters())
    torch.testing.assert_close(ours, exact, rtol=1e-4, atol=1e-7)
    assert (first - exact).norm() > 100 * (ours - exact).norm()
    assert all(torch.equal(w, b) for w, b in zip(trainer.weights, before))
    # The optimizer's momentum buffers are read, not advanced.
    for p, s in trainer.optimizer.state.items():
        assert torch.equal(s["momentum_buffer"], state[p]["momentum_buffer"])


def test_unrolled_finite_difference_sees_the_virtual_steps_dropout_masks() -> None:
    # Plain SGD, one learning rate: only the masks can make the finite difference wrong.
    trainer, data = two_group_trainer(TinyDropout(), [{"lr": 0.5}, {"lr": 0.5}], buffers=False)
    trainer.model.train()
    rng = torch.get_rng_state()
    exact = flat(exact_sgd_gradient(trainer, data, rng))
    after_reference = torch.get_rng_state()
    torch.set_rng_state(rng)
    trainer._unrolled_arch_gradient(*data)
    ours = flat(a.grad for a in trainer.arch.parameters())
    # With masks redrawn at w+ and w-, the difference quotient divides mask noise by 2 eps
    # (relative error in the hundreds here); with the virtual step's masks it is the
    # Hessian-vector product of the exact gradient, to the same O(eps^2) as without dropout.
    torch.testing.assert_close(ours, exact, rtol=1e-4, atol=1e-7)
    # torch's generator ends where the virtual step and the validation pass left it.
    assert torch.equal(torch.get_rng_state(), after_reference)


def test_unrolled_with_another_optimizer_than_sgd_is_a_clear_error() -> None:
    model = Tiny()
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = TensorDataset(torch.randn(8, 3), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"unrolled=True .* Adam"):
        DartsTrainer(model, nn.CrossEntropyLoss(), None, adam, 1, data, unrolled=True)
    DartsTrainer(model, nn.CrossEntropyLoss(), None, adam, 1, data)  # first order: any optimizer
