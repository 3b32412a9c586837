"""The trainer guide's two examples (../shared/seed/000_7f298d0f6177c942.txt), run for real.

The code of both examples is the guide's, with the imports changed to nastrain,
scikit-learn's digits in place of MNIST, and the guide's small slips mended:
the optimizer gets the model's parameters, ``validate`` takes ``self`` (and is
written out), ``fit`` iterates ``self.train_dataset`` (the guide's
``self.dataset`` is never set), and the parts the guide elides (``...``) are
filled in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# The guide's imports, changed to nastrain:
#   import nni; from nni.retiarii import register_trainer
#   from nni.retiarii.trainer import BaseTrainer
#   from nni.retiarii.trainer.pytorch import BaseOneShotTrainer
#   from nni.retiarii.trainer.pytorch.utils import replace_layer_choice, replace_input_choice
import nastrain as nni
from nastrain import BaseOneShotTrainer, LayerChoice, register_trainer
from nastrain.trainer import BaseTrainer
from nastrain.utils import replace_input_choice, replace_layer_choice


class Digits(TensorDataset):
    """scikit-learn's bundled 8x8 digits, flattened, shuffled once and split 1200/597."""

    def __init__(self, train: bool = True) -> None:
        data = load_digits()
        order = torch.randperm(len(data.target), generator=torch.Generator().manual_seed(0))
        x = torch.tensor(data.data, dtype=torch.float32)[order] / 16.0
        y = torch.tensor(data.target, dtype=torch.long)[order]
        cut = 1200
        super().__init__(*((x[:cut], y[:cut]) if train else (x[cut:], y[cut:])))


# --- Example 1: a classic trainer -------------------------------------------------------


@register_trainer
class MnistTrainer(BaseTrainer):
    def __init__(self, model, optimizer_class_name="SGD", learning_rate=0.1):
        super().__init__()
        self.model = model
        self.criterion = nn.CrossEntropyLoss()
        self.train_dataset = Digits(train=True)
        self.valid_dataset = Digits(train=False)
        self.optimizer = getattr(torch.optim, optimizer_class_name)(
            self.model.parameters(), lr=learning_rate
        )

    def validate(self):
        with torch.no_grad():
            x, y = self.valid_dataset.tensors
            return (self.model(x).argmax(1) == y).float().mean().item()

    def fit(self) -> None:
        for i in range(10):  # number of epochs:  # noqa: B007 - the guide's own code
            for x, y in DataLoader(self.train_dataset):
                self.optimizer.zero_grad()
                pred = self.model(x)
                loss = self.criterion(pred, y)
                loss.backward()
                self.optimizer.step()
        acc = self.validate()  # get validation accuracy
        nni.report_final_result(acc)


def test_classic_example_trains_reports_and_travels_as_a_spec() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    trainer = MnistTrainer(model, learning_rate=0.01)
    assert trainer.spec.to_json() == (
        '{"kwargs": {"learning_rate": 0.01, "optimizer_class_name": "SGD"}, '
        '"name": "MnistTrainer", "schema_version": 1}'
    )
    trainer.fit()
    # A 64-32-10 MLP reaches ~96% on held-out digits; 0.9 leaves room for seeds.
    assert trainer.final_result >= 0.9
    rebuilt = nni.TrainerSpec.from_json(trainer.spec.to_json()).build(nn.Linear(64, 10))
    assert isinstance(rebuilt, MnistTrainer) and rebuilt.optimizer.param_groups[0]["lr"] == 0.01


# --- Example 2: a one-shot trainer ------------------------------------------------------


class DartsLayerChoice(nn.Module):
    def __init__(self, layer_choice):
        super(DartsLayerChoice, self).__init__()  # noqa: UP008 - the guide's own code
        self.name = layer_choice.key
        self.op_choices = nn.ModuleDict(layer_choice.named_children())
        self.alpha = nn.Parameter(torch.randn(len(self.op_choices)) * 1e-3)

    def forward(self, *args, **kwargs):
        op_results = torch.stack([op(*args, **kwargs) for op in self.op_choices.values()])
        alpha_shape = [-1] + [1] * (len(op_results.size()) - 1)
        return torch.sum(op_results * F.softmax(self.alpha, -1).view(*alpha_shape), 0)


class DartsInputChoice(nn.Module):
    """The guide elides it; the same idea for inputs."""

    def __init__(self, input_choice):
        super().__init__()
        self.name = input_choice.key
        self.n_chosen = input_choice.n_chosen
        self.alpha = nn.Parameter(torch.randn(input_choice.n_candidates) * 1e-3)

    def forward(self, inputs):
        weights = F.softmax(self.alpha, -1)
        return sum(w * x for w, x in zip(weights, inputs))


def select_best_of_module(module):
    """The guide's helper: the strongest candidate name, or the strongest input indices."""
    if isinstance(module, DartsLayerChoice):
        return list(module.op_choices)[int(module.alpha.argmax())]
    return sorted(module.alpha.topk(module.n_chosen).indices.tolist())


class DartsTrainer(BaseOneShotTrainer):
    def __init__(self, model, loss, metrics, optimizer):
        self.model = model
        self.loss = loss
        self.metrics = metrics
        self.num_epochs = 10

        self.nas_modules = []
        replace_layer_choice(self.model, DartsLayerChoice, self.nas_modules)
        replace_input_choice(self.model, DartsInputChoice, self.nas_modules)

        # ... init dataloaders and optimizers (elided in the guide)
        train = Digits(train=True)
        half = len(train) // 2
        x, y = train.tensors
        self.train_loader = DataLoader(TensorDataset(x[:half], y[:half]), batch_size=50)
        self.valid_loader = DataLoader(TensorDataset(x[half:], y[half:]), batch_size=50)
        alphas = {id(m.alpha) for _, m in self.nas_modules}
        self.model_optim = optimizer
        self.ctrl_optim = torch.optim.Adam(
            [p for p in self.model.parameters() if id(p) in alphas], 3e-2, betas=(0.5, 0.999)
        )

    def train_architecture(self, x, y):
        self.ctrl_optim.zero_grad()
        self.loss(self.model(x), y).backward()
        self.ctrl_optim.step()

    def train_model_weight(self, x, y):
        self.model_optim.zero_grad()
        self.loss(self.model(x), y).backward()
        self.model_optim.step()
        nni.report_intermediate_result(self.metrics(self.model(x), y))

    def fit(self):
        for i in range(self.num_epochs):  # noqa: B007 - the guide's own code
            for (trn_X, trn_y), (val_X, val_y) in zip(self.train_loader, self.valid_loader):
                self.train_architecture(val_X, val_y)
                self.train_model_weight(trn_X, trn_y)

    @torch.no_grad()
    def export(self):
        result = dict()
        for name, module in self.nas_modules:
            if name not in result:
                result[name] = select_best_of_module(module)
        return result


class Zero(nn.Module):
    """An op that destroys its input: the planted worst candidate."""

    def forward(self, x):
        return torch.zeros_like(x)


class PlantedSpace(nn.Module):
    """A small MLP whose useful candidates are 'linear' (vs 'zero') and input 0 (the features;
    input 1 is noise)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(64, 32)
        self.hidden = LayerChoice({"zero": Zero(), "linear": nn.Linear(32, 32)}, label="hidden")
        self.pick = nni.InputChoice(2, 1, label="pick")
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.hidden(h))
        noise = torch.randn_like(h) * 3
        return self.head(self.pick([h, noise]))


def test_one_shot_example_finds_the_planted_ops_and_exports_a_runnable_arch() -> None:
    space = PlantedSpace()
    model_copy = PlantedSpace()
    model_copy.load_state_dict(space.state_dict())

    def accuracy(logits, y):
        return (logits.argmax(1) == y).float().mean()

    weights = [p for n, p in space.named_parameters()]
    trainer = DartsTrainer(
        space, nn.CrossEntropyLoss(), accuracy, torch.optim.SGD(weights, lr=0.05, momentum=0.9)
    )
    trainer.fit()
    arch = trainer.export()
    assert arch == {"hidden": "linear", "pick": [0]}
    assert len(trainer.intermediate_results) == trainer.num_epochs * len(trainer.train_loader)
    fixed = nni.apply_arch(model_copy, arch)
    x, _ = Digits(train=False).tensors
    assert fixed(x).shape == (len(x), 10)
