"""The report of a multi-trial experiment: what its store holds, as the page embeds it.

:func:`collect` reads the store read-only (:meth:`Store.read
<nastrain.experiments.store.Store.read>`: safe while the experiment runs, after it stopped,
after a crash; a trial left running by a process that is gone shows as interrupted) and
returns the JSON document ``assets/experiment.js`` draws. The document holds everything the
store says of each trial: its ``index``, ``arch``, ``status``, ``reason``, ``seed``,
``attempts``, ``started``, ``ended``, ``end_order``, ``worker``, ``final`` metric and its
intermediate results, and beside them what the page derives (``value``, ``rank``,
``seconds``).

The intermediate results are columns, to keep a page of 2,000 trials with 100 results
each small and quick to load (:data:`INTERMEDIATE_ENCODING`): one column per metric key
(``"default"`` for a result that is a plain number), each the float64 values of every
result of every trial in order, little-endian, in base64; NaN where a result has no such
key (a stored metric is never NaN). ``offsets[i]:offsets[i + 1]`` are the results of the
``i``-th trial of ``trials``; ``dict_runs`` are run lengths, alternately of results that
were plain numbers and of results that were dicts (plain first). :func:`intermediate`
turns them back into the metrics the store holds.
"""

from __future__ import annotations

import base64
import math
import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nastrain.experiments.records import ExperimentResult, Trial
from nastrain.experiments.store import Store
from nastrain.reporting import Metric
from nastrain.serialization import SCHEMA_VERSION, converter

__all__ = ["INTERMEDIATE_ENCODING", "collect", "ended", "intermediate", "trials"]

#: How the document's intermediate results are encoded (its ``intermediate.encoding``).
INTERMEDIATE_ENCODING = "float64-le-base64"

#: The fields of a trial as the store holds them, in each entry of the document's
#: ``trials`` (the intermediate results apart, in its ``intermediate`` columns).
_STORED = (
    "index",
    "arch",
    "status",
    "reason",
    "seed",
    "attempts",
    "started",
    "ended",
    "end_order",
    "worker",
    "final",
)


def collect(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The document a report of the experiment store at ``path`` draws (and embeds).

    The store is read read-only, in one read transaction (one consistent snapshot, also
    while the experiment writes). An empty experiment (no trials yet) is a document with
    no trials; a file that is not a store is the store's own error (:class:`StoreError
    <nastrain.experiments.store.StoreError>`, naming it)."""
    path = Path(path)
    with Store.read(path) as store:
        store.connection.execute("BEGIN")  # one snapshot of a store that may be written
        try:
            record = store.record
            trials = store.observed_trials()
            writer = store.live_writer()
            run = store.run_settings() or {}
        finally:
            store.connection.execute("ROLLBACK")
    now = time.time()
    result = ExperimentResult(trials=tuple(trials), mode=record.mode, store=str(path))
    ranks = {t.index: i + 1 for i, t in enumerate(result.ranked())}
    best = result.best_trial
    documents = []
    for trial in trials:
        document: dict[str, Any] = {name: getattr(trial, name) for name in _STORED}
        document.update(value=trial.value, rank=ranks.get(trial.index), seconds=trial.seconds)
        documents.append(document)
    space_name = record.space_name or "experiment"
    return {
        "kind": "experiment",
        "schema_version": SCHEMA_VERSION,
        "title": f"{space_name.rpartition(':')[2].rpartition('.')[2]}: {path.name}",
        "generated": now,
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)),
        "store": str(path),
        "writer": None if writer is None else writer.describe(),
        "ended": writer is None,
        "experiment": {
            "space_name": record.space_name,
            "trainer": converter.unstructure(record.trainer),
            "strategy": converter.unstructure(record.strategy),
            "seed": record.seed,
            "mode": record.mode,
            "schema_version": record.schema_version,
            "max_trials": run.get("max_trials"),
            "concurrency": run.get("concurrency"),
            "executor": run.get("executor"),
            "run_started": run.get("started"),
        },
        "space": [
            {**converter.unstructure(choice), "size": choice.size} for choice in record.space
        ],
        "counts": result.counts(),
        "best": None
        if best is None
        else {"index": best.index, "value": best.value, "arch": best.arch, "final": best.final},
        "final_keys": _keys(t.final for t in trials if t.final is not None),
        "trials": documents,
        "intermediate": _encode([t.intermediate for t in trials]),
    }


def ended(path: str | os.PathLike[str]) -> bool:
    """Whether the experiment of the store at ``path`` has ended: no live process holds the
    store's lease (none does, or its owner is dead or silent)."""
    with Store.read(path) as store:
        return store.live_writer() is None


def _keys(metrics: Any) -> list[str]:
    """Every key of ``metrics`` (``"default"`` for a plain number), ``"default"`` first."""
    keys: set[str] = set()
    for metric in metrics:
        keys.update(metric if isinstance(metric, dict) else ("default",))
    return sorted(keys, key=lambda k: (k != "default", k))


def _encode(results: Sequence[Sequence[Metric]]) -> dict[str, Any]:
    flat = [metric for trial in results for metric in trial]
    offsets = [0]
    for trial in results:
        offsets.append(offsets[-1] + len(trial))
    keys = _keys(flat)
    runs: list[int] = []
    plain = True  # the first run counts plain numbers (maybe none)
    count = 0
    for metric in flat:
        if isinstance(metric, dict) == plain:
            runs.append(count)
            plain, count = not plain, 0
        count += 1
    runs.append(count)
    columns = {}
    for key in keys:
        values = [
            (metric.get(key, math.nan) if isinstance(metric, dict) else metric)
            if key == "default" or isinstance(metric, dict)
            else math.nan
            for metric in flat
        ]
        columns[key] = base64.b64encode(struct.pack(f"<{len(values)}d", *values)).decode()
    return {
        "encoding": INTERMEDIATE_ENCODING,
        "count": len(flat),
        "offsets": offsets,
        "keys": keys,
        "dict_runs": runs,
        "columns": columns,
    }


def intermediate(document: dict[str, Any]) -> list[tuple[Metric, ...]]:
    """The intermediate results of every trial of a report's ``document`` (in the order of
    its ``trials``), decoded from its columns: the metrics as the store holds them."""
    encoded = document["intermediate"]
    if encoded.get("encoding") != INTERMEDIATE_ENCODING:
        raise ValueError(
            f"intermediate results encoded as {encoded.get('encoding')!r}, not "
            f"{INTERMEDIATE_ENCODING!r}"
        )
    count = int(encoded["count"])
    columns = {
        key: struct.unpack(f"<{count}d", base64.b64decode(text))
        for key, text in encoded["columns"].items()
    }
    is_dict: list[bool] = []
    for i, run in enumerate(encoded["dict_runs"]):
        is_dict.extend([i % 2 == 1] * run)
    flat: list[Metric] = []
    for i in range(count):
        if is_dict[i]:
            flat.append({k: v[i] for k, v in columns.items() if not math.isnan(v[i])})
        else:
            flat.append(columns["default"][i])
    offsets = encoded["offsets"]
    return [tuple(flat[offsets[j] : offsets[j + 1]]) for j in range(len(offsets) - 1)]


def trials(document: dict[str, Any]) -> list[Trial]:
    """The trials a report's ``document`` holds, as :class:`Trial` records (what
    :meth:`Store.observed_trials <nastrain.experiments.store.Store.observed_trials>` gave
    when the page was written)."""
    return [
        Trial(**{name: entry[name] for name in _STORED}, intermediate=results)
        for entry, results in zip(document["trials"], intermediate(document), strict=True)
    ]
