"""Model throughput: ResNet-50 on 8-channel tiles through our LightningModule and encoder against
torchvision's ResNet-50 on 3-channel tiles in a bare loop, same device, precision, layout.

    python scripts/bench_resnet.py --device cuda [--compile] [--reps 5]   # 224x224, bf16, NHWC
    python scripts/bench_resnet.py                                        # CPU: 64x64, fp32

Ours: ``ResponseModule(model=configs/model/resnet50.yaml)`` training step as the module runs it
(per-step re-seed, uint16 -> normalise -> augment on the device, ``TorchvisionEncoder`` ->
gated-attention MIL -> fusion head, BCE), channels_last, bf16 autocast on GPU, optional
``torch.compile`` (the module's ``compile`` flag). Baseline: ``torchvision.models.resnet50`` with
cross-entropy on the same number of 3-channel images. Both use AdamW. Interleaved, medians.
Last line: ``RATIO model_throughput=<ours img/s / torchvision img/s> target>=0.85 PASS|MISS``.
Public anchors (training, ResNet-50 224x224): ~2,470 img/s on an A100 with AMP
(NVIDIA DeepLearningExamples), ~7,000 img/s per H100 (MLPerf Training).
"""

from __future__ import annotations

import contextlib
import time

import torch
import torch.nn.functional as F
import torchvision

import benchlib
from immunoplex.training.module import ResponseModule

C = 8


def make_batch(b: int, n: int, tile: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A collated patient-bag batch (see the batch contract) with uint16 tiles on the device."""
    g = torch.Generator().manual_seed(0)
    tiles = torch.randint(0, 4000, (b, n, C, tile, tile), generator=g, dtype=torch.int32)
    batch = {
        "tiles": tiles.to(torch.uint16),
        "tile_low": torch.full((b, n, C), 10.0),
        "tile_high": torch.full((b, n, C), 3000.0),
        "tile_mask": torch.ones(b, n, dtype=torch.bool),
        "channel_mask": torch.ones(b, C, dtype=torch.bool),
        "has_image": torch.ones(b, dtype=torch.bool),
        "expression": torch.randn(b, 32, generator=g),
        "has_expression": torch.ones(b, dtype=torch.bool),
        "clinical": torch.zeros(b, 2),
        "treatment": torch.zeros(b, dtype=torch.long),
        "label": (torch.arange(b) % 2).float(),
    }
    return {k: v.to(device) for k, v in batch.items()}


def main() -> None:
    ap = benchlib.parser(__doc__)
    ap.add_argument("--tile", type=int, default=None, help="tile side (GPU 224, CPU 64)")
    ap.add_argument("--patients", type=int, default=None, help="patients per batch")
    ap.add_argument("--bag", type=int, default=None, help="tiles per patient")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed repetition")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast on GPU")
    args = ap.parse_args()
    device = benchlib.start(args)
    gpu = device.type == "cuda"
    tile = args.tile or (224 if gpu else (32 if args.quick else 64))
    b = args.patients or (4 if gpu else 2)
    n = args.bag or (64 if gpu else (2 if args.quick else 4))
    steps = args.steps or (20 if gpu else (1 if args.quick else 2))
    reps = args.reps or (1 if args.quick else (5 if gpu else 3))
    bf16 = gpu and not args.fp32
    print(
        f"{'GPU' if gpu else 'CPU (reduced)'}: {b}x{n} = {b * n} tiles/step of {tile}x{tile}, "
        f"{'bf16 autocast' if bf16 else 'fp32'}, channels_last, compile={args.compile}, "
        f"{steps} steps/rep",
        flush=True,
    )
    if gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # the expression MLP over the 32 made-up genes, as in the recorded figures (the shipped
    # gene-set scores need real gene symbols; the image path is what this measures)
    cfg = benchlib.compose(["model=resnet50", "model/expression_encoder=mlp"])
    dims = {
        "n_channels": C,
        "markers": [f"M{i}" for i in range(C)],
        "n_genes": 32,
        "gene_names": [f"G{i}" for i in range(32)],
        "n_clinical": 2,
        "treatments": ["anti-PD-1", "bexmarilimab+anti-PD-1"],
    }
    module = ResponseModule(
        model=cfg.model,
        dims=dims,
        optimizer=cfg.optimizer,
        augment=cfg.module.augment,
        channels_last=True,
        compile=args.compile,
    ).to(device)
    module.configure_model()
    module.train()
    opt_ours = torch.optim.AdamW(module.parameters(), lr=1e-4)
    batch = make_batch(b, n, tile, device)

    base = torchvision.models.resnet50().to(device).to(memory_format=torch.channels_last)
    if args.compile:
        base.compile()
    base.train()
    opt_base = torch.optim.AdamW(base.parameters(), lr=1e-4)
    x3 = torch.rand(b * n, 3, tile, tile, device=device).to(memory_format=torch.channels_last)
    y3 = torch.randint(0, 1000, (b * n,), device=device)

    def amp() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def ours() -> None:
        for i in range(steps):
            module.on_train_batch_start(batch, i)
            with amp():
                prepared = module.prepare_batch(batch, train=True)
                logit = module(prepared)["logit"].float()
            loss = F.binary_cross_entropy_with_logits(logit, batch["label"])
            opt_ours.zero_grad(set_to_none=True)
            loss.backward()
            opt_ours.step()
        benchlib.sync(device)

    def torchvision_bare() -> None:
        for _ in range(steps):
            with amp():
                loss = F.cross_entropy(base(x3).float(), y3)
            opt_base.zero_grad(set_to_none=True)
            loss.backward()
            opt_base.step()
        benchlib.sync(device)

    t = time.perf_counter()
    times = benchlib.interleave(
        {"ours": ours, "torchvision": torchvision_bare}, reps, warmup=2 if gpu else 1
    )
    ips = {k: b * n * steps / benchlib.median(v) for k, v in times.items()}
    for name, ts in times.items():
        print(f"{name:12s} s/rep {benchlib.spread(ts)}; {ips[name]:.1f} img/s")
    print(
        f"total {time.perf_counter() - t:.0f}s; anchors (224x224 training): A100 AMP ~2470 "
        "img/s (DeepLearningExamples), H100 ~7000 img/s (MLPerf Training)"
    )
    print(benchlib.ratio_line("model_throughput", ips["ours"] / ips["torchvision"], 0.85, ">="))


if __name__ == "__main__":
    main()
