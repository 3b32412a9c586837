"""One ENAS search measurement, in this process; prints one JSON line on stdout.

Runs NNI 2.10.1's legacy ``nni.retiarii.oneshot.pytorch.EnasTrainer`` (``--impl nni``,
run it with ``benchmarks/.nni-venv/bin/python``) or ``nastrain_enas.EnasTrainer``
(``--impl nastrain``, the project's venv) on the DARTS benchmark supernet
(:mod:`supernet`: C=8, 5 cells, labels shared across the cells of one type, the same
network for both), on random 3x16x16 inputs with 10 classes, for one epoch of
``warmup + steps`` weight steps followed by ``warmup + steps`` controller steps.

Measured:

* ``steps_per_s``: steps per second, a step being one shared-weight step plus one
  controller step, as NNI counts them: 1 / (weight step time + controller step time),
  each the mean over the last ``--steps`` steps of its phase (the first ``--warmup``
  are left out). A weight step ends when the trainer calls the weight optimizer's
  ``step()``; a controller step is the time between two calls of ``reward_function``,
  which both trainers call once per controller step.
* ``weight_step_s``, ``ctrl_step_s``: those two means; ``sample_ms``: the median time of
  one architecture sample (NNI's ``_resample``, ours ``controller.sample``) over the
  whole fit, both phases; ``decisions``: the controller's steps per sample.
* ``rss_before_mb``, ``peak_rss_mb``, ``added_mb``: as in ``bench_darts.py``.

NNI samples an ``InputChoice`` with ``n_chosen=2`` as any subset of its inputs, so some
samples choose none and the next layer crashes on the integer 0 it gets. To measure it at
all, the harness makes an empty selection read input 0 (``empty_selections`` counts how
often); that costs nothing and leaves NNI's sampling as it is.

Both trainers run with their defaults otherwise (``ctrl_steps_aggregate=20``: no
controller update falls in the timed steps of either). The exit status is 0 on success,
1 when the run failed and 2 when it was skipped (the implementation is not importable);
the JSON line then has ``error``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import torch
from bench_darts import SKIPPED, Skip, accuracy, peak_rss_mb, reset_peak_rss, rss_mb
from supernet import build_supernet
from torch import nn
from torch.utils.data import TensorDataset


def load_impl(impl: str) -> tuple[Any, Callable[[], nn.Module], dict[str, Any], dict[str, str]]:
    """The trainer class, a model factory, extra trainer arguments and version info."""
    if impl == "nni":
        try:
            import nni
            import nni.retiarii.nn.pytorch as nni_nn
            from nni.retiarii.oneshot.pytorch import EnasTrainer
            from nni.retiarii.oneshot.pytorch.random import PathSamplingInputChoice
        except ImportError as e:
            raise Skip(
                f"NNI is not importable here ({e}); run bash benchmarks/setup_nni.sh and use "
                "benchmarks/.nni-venv/bin/python"
            ) from e
        forward = PathSamplingInputChoice.forward

        def never_empty(self: Any, input_tensors: list[torch.Tensor]) -> Any:
            if isinstance(self.sampled, list) and not self.sampled:
                EMPTY[0] += 1
                return input_tensors[0]
            return forward(self, input_tensors)

        PathSamplingInputChoice.forward = never_empty
        return (
            EnasTrainer,
            lambda: build_supernet(nni_nn.LayerChoice, nni_nn.InputChoice),
            {},
            {"nni": nni.__version__},
        )
    try:
        import nastrain
        from nastrain.utils import allow_rewrite
        from nastrain_enas import EnasTrainer
    except ImportError as e:
        raise Skip(f"nastrain_enas.EnasTrainer is not importable ({e})") from e
    # The benchmark's own supernet asks for the whole of it to be rewritten for the CPU (not
    # only the candidates), as any user may with allow_rewrite(model).
    return (
        EnasTrainer,
        lambda: allow_rewrite(build_supernet(nastrain.LayerChoice, nastrain.InputChoice)),
        {"progress": False},
        {"nastrain": getattr(nastrain, "__version__", "?")},
    )


EMPTY = [0]  # NNI: samples whose InputChoice chose no input


def timed_calls(owner: Any, name: str, into: list[float]) -> None:
    """Wrap ``owner.name`` so that each call's duration is appended to ``into``."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = original(*args, **kwargs)
        into.append(time.perf_counter() - start)
        return result

    setattr(owner, name, wrapper)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build data, model and trainer; run ``fit()``; return the numbers."""
    trainer_cls, make_model, extra, versions = load_impl(args.impl)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    per_half = args.warmup + args.steps
    n = args.batch * 2 * per_half
    x = torch.randn(n, 3, 16, 16)
    y = torch.randint(0, 10, (n,))
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)

    weight_stamps: list[float] = []
    reward_stamps: list[float] = []
    original_step = optimizer.step

    def timed_step(*a: Any, **kw: Any) -> Any:
        result = original_step(*a, **kw)
        weight_stamps.append(time.perf_counter())
        return result

    optimizer.step = timed_step  # type: ignore[method-assign]

    def reward(out: torch.Tensor, target: torch.Tensor) -> float:
        reward_stamps.append(time.perf_counter())
        return (out.argmax(1) == target).float().mean().item()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # NNI: "EnasTrainer is deprecated"
        trainer = trainer_cls(
            model=model,
            loss=nn.CrossEntropyLoss(),
            metrics=accuracy,
            reward_function=reward,
            optimizer=optimizer,
            num_epochs=1,
            dataset=TensorDataset(x, y),
            batch_size=args.batch,
            workers=0,
            device="cpu",
            **extra,
        )
    samples: list[float] = []
    if args.impl == "nni":
        timed_calls(trainer, "_resample", samples)
        decisions = len(trainer.nas_fields)
    else:
        timed_calls(trainer.controller, "sample", samples)
        decisions = len(trainer.controller.decisions)

    rss_before = rss_mb()
    peak_reset = reset_peak_rss()
    fit_start = time.perf_counter()
    trainer.fit()
    fit_s = time.perf_counter() - fit_start
    peak = max(peak_rss_mb(), rss_before)

    for what, stamps in (("weight optimizer steps", weight_stamps), ("rewards", reward_stamps)):
        if len(stamps) != per_half:
            raise RuntimeError(f"{len(stamps)} {what} in fit(), expected {per_half}")
    first = args.warmup - 1 if args.warmup else 0
    timed = args.steps if args.warmup else args.steps - 1
    weight_step = (weight_stamps[-1] - weight_stamps[first]) / timed
    ctrl_step = (reward_stamps[-1] - reward_stamps[first]) / timed
    return {
        "impl": args.impl,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "batch": args.batch,
        "seed": args.seed,
        "steps_per_s": round(1 / (weight_step + ctrl_step), 4),
        "weight_step_s": round(weight_step, 4),
        "ctrl_step_s": round(ctrl_step, 4),
        "sample_ms": round(statistics.median(samples) * 1e3, 3),
        "decisions": decisions,
        "empty_selections": EMPTY[0],
        "fit_s": round(fit_s, 3),
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(peak, 1),
        "added_mb": round(peak - rss_before, 1),
        "peak_reset": peak_reset,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, **versions},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=["nni", "nastrain"], required=True)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per phase")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, per phase")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 2 or args.warmup < 0:
        parser.error("--steps must be at least 2 and --warmup at least 0")
    try:
        result = measure(args)
    except Skip as e:
        print(json.dumps({"impl": args.impl, "error": f"skipped: {e}"}), flush=True)
        return SKIPPED
    except Exception as e:
        traceback.print_exc()
        print(json.dumps({"impl": args.impl, "error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
