"""The patient-level LightningDataModule: cohort -> split -> tile caches -> patient bags."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from immunoplex.data.bags import (
    PatientBagDataset,
    PatientRecord,
    PatientSampler,
    SlideTiles,
    collate_bags,
)
from immunoplex.data.clinical import ClinicalEncoder
from immunoplex.data.cohort import Cohort, load_cohort, slide_channel_names
from immunoplex.data.config import (  # noqa: F401  (re-exported: the historical import path)
    DataConfig,
    SplitConfig,
    data_config_from,
    expression_normalizer,
    tiling_params,
    user_aliases,
)
from immunoplex.data.expression_inputs import expression_features, feature_matrix
from immunoplex.data.feature_table import FeatureTable, item_features
from immunoplex.data.slides import slide_tiles
from immunoplex.data.splits import Split, make_split
from immunoplex.data.survival import (
    check_survival,
    survival_columns,
    survival_endpoint,
    survival_meta,
    trainable,
)
from immunoplex.errors import ImmunoplexError, ManifestError
from immunoplex.expression.io import read_expression
from immunoplex.expression.normalise import ExpressionNormalizer
from immunoplex.io.panel import Panel
from immunoplex.tiles.cache import TileCache, TileSet
from immunoplex.tiles.empty import check_not_empty
from immunoplex.tiles.params import TilingParams

log = logging.getLogger(__name__)


def _build_one(
    args: tuple[str, str, Panel, TilingParams, float | None, list[str] | None, Any],
) -> Any:
    cache_root, path, panel, params, mpp, required, names = args
    try:
        TileCache(cache_root).load_or_build(
            path, panel, params, mpp=mpp, required=required, channel_names=names
        )
        return None
    except ImmunoplexError as err:
        return str(err)


class ResponseDataModule(L.LightningDataModule):
    """Builds patient records from a manifest, an optional expression table and tile caches."""

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.panel = Panel(list(cfg.markers), aliases=dict(cfg.aliases or {}))
        self.params = tiling_params(cfg)
        self.cohort: Cohort | None = None
        self.split: Split | None = None
        self.records: dict[str, PatientRecord] = {}
        self.skipped: list[str] = []
        self.genes: list[str] = []
        self.expression_norm: ExpressionNormalizer | None = None
        self.expression_features: Any = None  # ExpressionFeatures (expression_norm=features)
        self.clinical = ClinicalEncoder()
        self.treatments: list[str] = []
        self.slide_keys: dict[str, str] = {}
        self.embedding_encoder: torch.nn.Module | None = None
        self.feature_table: FeatureTable | None = None
        self.use_tiles = True  # False: bags carry no tiles (a model without an image branch)
        self._prepared = False

    # ---- preparation (rank zero): tile caches -------------------------------------------
    def _required(self) -> list[str] | None:
        req = self.cfg.required_markers
        return None if req is None else list(req)

    def prepare_data(self) -> None:
        """Tile every slide once into the on-disk cache (parallel, resumable, atomic)."""
        cohort = self._load_cohort()
        jobs = [
            (
                self.cfg.cache_dir,
                str(row.image_path),
                self.panel,
                self.params,
                self._slide_mpp(row),
                self._required(),
                slide_channel_names(row),
            )
            for row in cohort.slides.itertuples()
        ]
        workers = self.cfg.prep_workers or min(len(jobs), os.cpu_count() or 1)
        if workers <= 1 or len(jobs) <= 1:
            errors = [_build_one(j) for j in jobs]
        else:
            with ProcessPoolExecutor(workers) as pool:
                errors = list(pool.map(_build_one, jobs, chunksize=4))
        bad = [e for e in errors if e]
        if bad and self.cfg.on_bad_slide != "skip":
            raise ManifestError(bad[0])
        self._prepared = True

    def _load_cohort(self) -> Cohort:
        """Read and validate the manifest once (prepare_data and setup share it)."""
        if self.cohort is None:
            cols = list(self.cfg.clinical_columns)
            self.cohort = load_cohort(self.cfg.manifest, cols, survival=survival_columns(self.cfg))
        return self.cohort

    @staticmethod
    def _slide_mpp(row: Any) -> float | None:
        mpp = getattr(row, "mpp", None)
        return None if mpp is None or pd.isna(mpp) else float(mpp)

    # ---- setup (every rank): records -----------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        cfg = self.cfg
        cohort = self._load_cohort()
        sc = cfg.split
        self.split = make_split(
            cohort.patients,
            mode=sc.mode,
            fold=sc.fold,
            n_folds=sc.n_folds,
            inner_fold=sc.inner_fold,
            n_inner_folds=sc.n_inner_folds,
            test_cohort=sc.test_cohort,
            val_fraction=sc.val_fraction,
            seed=cfg.seed,
            require_test=sc.require_test,
            crossfit_folds=sc.crossfit_folds,
            crossfit_fold=sc.crossfit_fold,
        )
        train_ids = set(self.split.train)
        patients = cohort.patients.set_index("patient_id")
        self.treatments = self._treatment_list(cohort)
        clinical = self._clinical_matrix(patients, train_ids)
        expression = self._expression_matrix(patients, train_ids)
        slides = self._load_slides(cohort)
        ep = survival_endpoint(cfg)
        self.feature_table = FeatureTable.from_config(cfg.features)
        if self.feature_table is not None:
            self.feature_table.report_missing([str(p) for p in patients.index])
        for pid, row in patients.iterrows():
            pid = str(pid)
            table_row = item_features(self.feature_table, pid)
            self.records[pid] = PatientRecord(
                patient_id=pid,
                label=int(row["label"]),
                treatment=self.treatments.index(self._treatment_name(row["treatment"])),
                cohort=str(row["cohort"]),
                clinical=clinical[pid],
                expression=expression.get(pid),
                slides=slides.get(pid, []),
                time=float(row[f"time_{ep}"]) if ep else float("nan"),
                event=int(row[f"event_{ep}"]) if ep else -1,
                features=None if table_row is None else table_row[0],
                has_features=table_row is not None and table_row[1],
            )
        if ep:
            check_survival(self, cohort, ep)
        lost = [p for p in self.split.val + self.split.test if not self._usable(self.records[p])]
        if lost:
            raise ManifestError(
                f"{cohort.manifest}: patient(s) {lost[:5]} in val/test have neither usable "
                "slides nor expression"
            )

    def _usable(self, rec: PatientRecord) -> bool:
        return rec.n_tiles > 0 or rec.expression is not None or rec.has_features

    @staticmethod
    def _treatment_name(value: object) -> str:
        text = str(value).strip()
        return text if text else "unspecified"

    def _treatment_list(self, cohort: Cohort) -> list[str]:
        seen = sorted({self._treatment_name(t) for t in cohort.patients["treatment"]})
        if self.cfg.treatments is None:
            return seen
        allowed = list(self.cfg.treatments)
        unknown = [t for t in seen if t not in allowed]
        if unknown:
            raise ManifestError(
                f"{cohort.manifest}: treatment(s) {unknown} not in the configured list {allowed}"
            )
        return allowed

    def _clinical_matrix(
        self, patients: pd.DataFrame, train_ids: set[str]
    ) -> dict[str, np.ndarray]:
        """Clinical inputs per patient from the encoder fitted on the training patients."""
        train = patients.loc[patients.index.isin(train_ids)]
        self.clinical = ClinicalEncoder.fit(list(self.cfg.clinical_columns), train)
        return {str(pid): self.clinical.transform(row) for pid, row in patients.iterrows()}

    def _expression_matrix(
        self, patients: pd.DataFrame, train_ids: set[str]
    ) -> dict[str, np.ndarray]:
        if not self.cfg.expression:
            return {}
        table = read_expression(self.cfg.expression)
        values = table.values
        unknown = sorted(set(values.index) - set(patients.index))
        if unknown:
            log.warning(
                "%s: %d expression sample(s) match no patient in the manifest and are not used: %s",
                table.source,
                len(unknown),
                unknown[:5],
            )
        values = values.loc[values.index.isin(patients.index)]
        cohorts = patients.loc[values.index, "cohort"].astype(str)
        fit_ids = [i for i in values.index if i in train_ids]
        if not fit_ids:
            raise ManifestError(f"{table.source}: no training patient has expression")
        feats = expression_features(self.cfg.expression_norm)
        if feats is not None:  # the model reads F within-sample features, not G genes
            self.expression_features = feats
            out = feature_matrix(feats, values, fit_ids)
            self.genes = list(feats.names)
            return out
        self.genes = list(values.columns)
        norm = expression_normalizer(self.cfg)
        norm.fit(values.loc[fit_ids], cohorts.loc[fit_ids])
        self.expression_norm = norm
        matrix = norm.transform(values, cohorts)
        missing = [p for p in patients.index if p not in set(values.index)]
        if missing:
            log.info("%d patient(s) have no expression (missing modality)", len(missing))
        return {str(pid): matrix[i] for i, pid in enumerate(values.index)}

    def _load_slides(self, cohort: Cohort) -> dict[str, list[SlideTiles]]:
        cache = TileCache(self.cfg.cache_dir)
        out: dict[str, list[SlideTiles]] = {}
        for row in cohort.slides.itertuples():
            try:
                ts: TileSet = cache.load_or_build(
                    row.image_path,
                    self.panel,
                    self.params,
                    mpp=self._slide_mpp(row),
                    required=self._required(),
                    channel_names=slide_channel_names(row),
                )
            except ImmunoplexError as err:
                if self.cfg.on_bad_slide != "skip":
                    raise
                self.skipped.append(f"{row.slide_id}: {err}")
                continue
            if len(ts.coords) == 0:  # an empty image is a bad slide, not "no tissue"
                try:
                    check_not_empty(
                        row.image_path,
                        self.params,
                        mpp=self._slide_mpp(row),
                        channel_names=slide_channel_names(row),
                    )
                except ImmunoplexError as err:
                    if self.cfg.on_bad_slide != "skip":
                        raise
                    self.skipped.append(f"{row.slide_id}: {err}")
                    continue
                self.skipped.append(f"{row.slide_id}: no tissue tiles")
                continue
            self.slide_keys[str(row.slide_id)] = ts.key
            st = slide_tiles(ts, str(row.slide_id), self.cfg.intensity_low, self.cfg.intensity_high)
            out.setdefault(str(row.patient_id), []).append(st)
        if self.skipped:
            log.warning("skipped %d slide(s):\n  %s", len(self.skipped), "\n  ".join(self.skipped))
        return out

    # ---- two-stage mode -------------------------------------------------------------------
    @property
    def embedding_mode(self) -> bool:
        return bool((self.cfg.embeddings or {}).get("enabled", False))

    # ---- dims and metadata ---------------------------------------------------------------
    @property
    def dims(self) -> dict[str, Any]:
        return {
            "n_channels": len(self.panel.markers),
            "markers": list(self.panel.markers),
            "n_genes": len(self.genes),
            "gene_names": list(self.genes),
            "n_clinical": 2 * len(self.cfg.clinical_columns),
            "treatments": list(self.treatments),
            **(self.feature_table.dims() if self.feature_table is not None else {}),
        }

    def pos_weight(self) -> float:
        assert self.split is not None
        y = np.array([self.records[p].label for p in self.split.train])
        y = y[y >= 0]
        return float((y == 0).sum() / max((y == 1).sum(), 1))

    def metadata(self) -> dict[str, Any]:
        """What inference needs to turn a new slide/table into the same inputs."""
        return {
            "panel": {"markers": list(self.panel.markers), "aliases": dict(self.cfg.aliases)},
            "required_markers": self._required(),
            "tiling": self.params.to_dict(),
            "intensity": {
                "mode": "slide",
                "low_pct": self.cfg.intensity_low,
                "high_pct": self.cfg.intensity_high,
            },
            "genes": list(self.genes),
            "expression_norm": self.expression_norm.to_dict() if self.expression_norm else None,
            "expression_features": (
                self.expression_features.to_dict() if self.expression_features else None
            ),
            **self.clinical.to_dict(),  # clinical_columns, clinical_stats
            "treatments": list(self.treatments),
            "split": self.split.name if self.split else None,
            "task": self.cfg.task,
            "survival": survival_meta(self.cfg),
            "features": self.feature_table.to_dict() if self.feature_table is not None else None,
        }

    # ---- loaders -------------------------------------------------------------------------
    def patient_ids(self, stage: str) -> list[str]:
        assert self.split is not None
        ids = {"train": self.split.train, "val": self.split.val, "test": self.split.test}[stage]
        recs = [p for p in ids if self._usable(self.records[p])]
        if stage == "train":
            recs = [p for p in recs if trainable(self.records[p], self.cfg.task)]
        return recs

    def dataset(self, stage: str) -> PatientBagDataset:
        recs = [self.records[p] for p in self.patient_ids(stage)]
        if not self.use_tiles:
            recs = [replace(r, slides=[]) for r in recs]
        bag = self.cfg.bag_size if stage == "train" else self.cfg.max_eval_tiles
        return PatientBagDataset(recs, len(self.panel.markers), len(self.genes), bag)

    def _loader(self, stage: str) -> DataLoader:
        ds = self.dataset(stage)
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        sampler = PatientSampler(
            [r.label for r in ds.records],
            train=stage == "train",
            seed=self.cfg.seed,
            balanced=self.cfg.balanced_sampling and stage == "train",
            rank=rank,
            world_size=world,
        )
        workers = self.cfg.num_workers
        # Bags depend only on the sampler's (index, bag seed) pairs, drawn in the main process, so
        # workers neither duplicate nor change them; each worker's own RNGs are seeded from
        # (seed, rank, worker) all the same (seed_worker), for anything else that draws.
        gen = torch.Generator()
        gen.manual_seed(self.cfg.seed * 1_000_003 + rank)
        return DataLoader(
            ds,
            batch_size=self.per_device_batch_size(world),
            sampler=sampler,
            collate_fn=collate_bags,
            num_workers=workers,
            pin_memory=self.cfg.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.cfg.persistent_workers and workers > 0,
            worker_init_fn=seed_worker if workers > 0 else None,
            generator=gen,
        )

    def per_device_batch_size(self, world_size: int) -> int:
        """Per-device batch size: fixed, or the global batch divided over the ranks."""
        if self.cfg.global_batch_size:
            return max(1, int(self.cfg.global_batch_size) // max(world_size, 1))
        return int(self.cfg.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from its torch seed (the loader's
    generator + worker id), so forked workers do not share one copied RNG state."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
