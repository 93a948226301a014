import numpy as np
import pytest
import torch

from immunoplex.data.bags import (
    PatientBagDataset,
    PatientRecord,
    PatientSampler,
    SlideTiles,
    collate_bags,
)


def _record(pid: str, n_tiles: list[int], label: int = 1, expr: bool = True) -> PatientRecord:
    slides = []
    for k, n in enumerate(n_tiles):
        tiles = np.full((n, 3, 4, 4), 0, dtype=np.uint16)
        tiles += np.arange(n, dtype=np.uint16)[:, None, None, None] + 100 * k
        slides.append(
            SlideTiles(
                slide_id=f"{pid}-{k}",
                tiles=tiles,
                coords=np.zeros((n, 2), dtype=np.int64),
                low=np.zeros(3, np.float32),
                high=np.full(3, 10.0 + k, np.float32),
                present=np.array([True, True, k == 0]),
            )
        )
    return PatientRecord(
        patient_id=pid,
        label=label,
        treatment=0,
        cohort="c",
        clinical=np.zeros(2, np.float32),
        expression=np.ones(5, np.float32) if expr else None,
        slides=slides,
    )


def test_bag_sampling_spans_slides_and_is_seeded() -> None:
    ds = PatientBagDataset([_record("a", [10, 6])], n_channels=3, n_genes=5, bag_size=8)
    a = ds[(0, 123)]
    b = ds[(0, 123)]
    c = ds[(0, 124)]
    assert a["tiles"].shape == (8, 3, 4, 4)
    assert a["tiles"].dtype == torch.uint16
    assert torch.equal(a["tiles"], b["tiles"])
    assert not torch.equal(a["tiles"], c["tiles"])
    # All tiles at evaluation (seed None), in slide order.
    full = ds[(0, None)]
    assert full["tiles"].shape[0] == 16
    assert full["tile_high"][-1, 0] == 11.0  # second slide's statistics follow its tiles
    # A marker missing from any slide of the patient is masked.
    assert full["channel_mask"].tolist() == [True, True, False]


def test_collate_pads_with_mask_and_marks_missing_expression() -> None:
    recs = [_record("a", [3]), _record("b", [5], label=0, expr=False), _record("c", [], -1)]
    ds = PatientBagDataset(recs, n_channels=3, n_genes=5, bag_size=None)
    batch = collate_bags([ds[(i, None)] for i in range(3)])
    assert batch["tiles"].shape == (3, 5, 3, 4, 4)
    assert batch["tile_mask"].sum(1).tolist() == [3, 5, 0]
    assert batch["has_image"].tolist() == [True, True, False]
    assert batch["has_expression"].tolist() == [True, False, True]
    assert torch.all(batch["tiles"][0, 3:] == 0)
    assert batch["tile_high"].shape == (3, 5, 3)
    assert batch["label"].tolist() == [1.0, 0.0, -1.0]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_sampler_shards_every_patient_exactly_once(world: int) -> None:
    labels = [0, 1] * 7 + [1]
    seen = []
    for rank in range(world):
        s = PatientSampler(labels, train=False, rank=rank, world_size=world)
        items = list(s)
        assert len(items) == len(s)
        seen += [i for i, seed in items if seed is None]
    assert sorted(seen) == list(range(len(labels)))


def test_train_sampler_is_epoch_seeded_and_equal_per_rank() -> None:
    labels = [0, 1] * 5 + [1]
    s0 = PatientSampler(labels, train=True, seed=1, rank=0, world_size=2)
    s1 = PatientSampler(labels, train=True, seed=1, rank=1, world_size=2)
    e0 = list(s0)
    assert len(e0) == len(list(s1)) == len(s0) == 6
    assert list(PatientSampler(labels, train=True, seed=1, rank=0, world_size=2)) == e0
    s0.set_epoch(1)
    assert list(s0) != e0


def test_balanced_sampler_draws_classes_evenly() -> None:
    labels = [1] * 10 + [0] * 90
    s = PatientSampler(labels, train=True, seed=0, balanced=True)
    draws = []
    for epoch in range(20):
        s.set_epoch(epoch)
        draws += [labels[i] for i, _ in s]
    assert 0.4 < np.mean(draws) < 0.6
