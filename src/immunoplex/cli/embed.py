"""`immunoplex-embed`: stage one of two-stage training, as its own (shardable) job.

    immunoplex-embed data.embeddings.encoder_checkpoint=RUN/model.ckpt
    immunoplex-embed embed.shard=3 embed.num_shards=8      # one of 8 GPUs / array tasks

Uses the training config (same data, panel, tiling, model encoder), so `immunoplex-train
experiment=two_stage` afterwards finds every embedding in the cache.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from immunoplex.cli.checks import validate_train
from immunoplex.cli.common import hydra_app
from immunoplex.errors import ConfigError


def embed(cfg: DictConfig) -> dict[str, int]:
    """Tile (if needed) and embed this shard's slides; returns cached/computed counts."""
    from immunoplex.data.datamodule import ResponseDataModule, data_config_from
    from immunoplex.training.embed import attach_embeddings, build_encoder

    shard = int(cfg.get("embed", {}).get("shard", 0))
    num_shards = int(cfg.get("embed", {}).get("num_shards", 1))
    if not 0 <= shard < num_shards:
        raise ConfigError(f"embed.shard={shard} outside 0..{num_shards - 1}")
    dm = ResponseDataModule(data_config_from(cfg.data, int(cfg.seed)))
    dm.prepare_data()
    dm.setup()
    emb = cfg.data.get("embeddings") or {}
    encoder = build_encoder(
        cfg.model, dm.dims["markers"], emb.get("encoder_checkpoint"), seed=int(cfg.seed)
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return attach_embeddings(dm, encoder, device, shard, num_shards, progress=True)


@hydra_app("train", validate_train)
def main(cfg: DictConfig) -> None:
    """Embed this shard's slides into the embedding cache."""
    report = embed(cfg)
    print(f"embeddings: {report['computed']} computed, {report['cached']} already cached")


if __name__ == "__main__":
    main()
