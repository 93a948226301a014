"""The bag DataLoader with worker processes (trainer=gpu: num_workers > 0, persistent workers):
every patient exactly once per epoch, bags set by the seed alone (same with 0 or 2 workers, new
each epoch), and each worker's numpy RNG seeded apart from the others."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from immunoplex.data.datamodule import ResponseDataModule, data_config_from, seed_worker

from .helpers import compose_train, fast_overrides


def _epochs(dm: ResponseDataModule, n_epochs: int) -> list[list[dict[str, torch.Tensor]]]:
    loader = dm.train_dataloader()
    out = []
    for epoch in range(n_epochs):
        loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        out.append(list(loader))
    return out


def _datamodule(
    tiny_cohort: Path, tmp_path: Path, workers: int, seed: int = 0
) -> ResponseDataModule:
    over = fast_overrides(tiny_cohort) + [
        f"data.num_workers={workers}",
        f"data.persistent_workers={workers > 0}",
        "data.bag_size=4",
        "data.batch_size=3",
    ]
    cfg = compose_train(over, tmp_path)
    dm = ResponseDataModule(data_config_from(cfg.data, seed))
    dm.prepare_data()
    dm.setup()
    return dm


def test_workers_bags_once_each_deterministic(tiny_cohort: Path, tmp_path: Path) -> None:
    serial = _epochs(_datamodule(tiny_cohort, tmp_path, 0), 2)
    dm2 = _datamodule(tiny_cohort, tmp_path, 2)
    assert dm2.train_dataloader().num_workers == 2
    parallel = _epochs(dm2, 2)
    again = _epochs(_datamodule(tiny_cohort, tmp_path, 2), 2)
    n_train = len(dm2.patient_ids("train"))
    for epoch in range(2):
        idx = torch.cat([b["index"] for b in parallel[epoch]]).tolist()
        assert sorted(idx) == list(range(n_train))  # every patient exactly once
        for a, b, c in zip(serial[epoch], parallel[epoch], again[epoch], strict=True):
            for key in ("index", "tiles", "tile_mask"):
                assert torch.equal(a[key], b[key]) and torch.equal(b[key], c[key]), key
    # New bags every epoch; and the bags of one epoch are not copies of one another.
    first = {int(i): t for b in parallel[0] for i, t in zip(b["index"], b["tiles"])}
    second = {int(i): t for b in parallel[1] for i, t in zip(b["index"], b["tiles"])}
    assert any(not torch.equal(first[i], second[i]) for i in first)
    bags = [t for t in first.values()]
    assert all(not torch.equal(bags[0], t) for t in bags[1:])
    # Another seed, other bags.
    other = _epochs(_datamodule(tiny_cohort, tmp_path, 2, seed=1), 1)[0]
    assert any(
        not torch.equal(a["tiles"], b["tiles"]) for a, b in zip(parallel[0], other, strict=True)
    )


class _Draws(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        return (info.id if info else -1), int(np.random.randint(0, 2**31))


@pytest.mark.parametrize("seed", [0, 1])
def test_seed_worker_distinct_and_reproducible(seed: int) -> None:
    def draws() -> list[tuple[int, int]]:
        gen = torch.Generator()
        gen.manual_seed(seed)
        loader = DataLoader(
            _Draws(), batch_size=None, num_workers=2, worker_init_fn=seed_worker, generator=gen
        )
        return [(int(w), int(v)) for w, v in loader]

    a, b = draws(), draws()
    assert a == b  # deterministic by seed
    per_worker = {w: [v for ww, v in a if ww == w] for w in (0, 1)}
    assert per_worker[0] and per_worker[1] and per_worker[0] != per_worker[1]
