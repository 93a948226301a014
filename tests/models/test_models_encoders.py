"""Tile encoders: shapes, channel masks, pretrained-weight inflation (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from immunoplex.errors import ConfigError
from immunoplex.models import MarkerEncoder, SmallCNN, TorchvisionEncoder, inflate_conv_weight
from immunoplex.models.encoders import torchvision_cache_path

C = 7


@pytest.mark.parametrize(
    ("factory", "dim"),
    [
        (lambda: SmallCNN(C, width=16, out_dim=24), 24),
        (lambda: SmallCNN(C, width=8, out_dim=16, norm="batch"), 16),
        (lambda: SmallCNN(C, width=8, out_dim=12, norm="batch", pool="max"), 12),
        (lambda: SmallCNN(C, width=8, out_dim=12, pool="avg"), 12),
        (lambda: MarkerEncoder(C, stem_width=8, out_dim=20), 20),
        (lambda: TorchvisionEncoder(C, arch="resnet18"), 512),
        (lambda: TorchvisionEncoder(C, arch="resnet18", out_dim=32), 32),
        (lambda: TorchvisionEncoder(C, arch="resnet50"), 2048),
        (lambda: TorchvisionEncoder(C, arch="efficientnet_b0"), 1280),
        (lambda: TorchvisionEncoder(C, arch="convnext_tiny"), 768),
    ],
    ids=[
        "small",
        "small_bn",
        "small_max",
        "small_avg",
        "marker",
        "resnet18",
        "resnet18_proj",
        "resnet50",
        "effb0",
        "convnext",
    ],
)
def test_encoder_maps_tiles_to_vectors(factory, dim: int) -> None:
    torch.manual_seed(0)
    enc = factory()
    x = torch.rand(2, C, 32, 32)
    out = enc(x)
    assert out.shape == (2, dim) == (2, enc.out_dim)
    assert torch.isfinite(out).all()
    enc.eval()
    with torch.no_grad():  # channels_last input gives the same result
        a = enc(x)
        b = enc(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_channel_mask_ignores_absent_channel_content() -> None:
    enc = SmallCNN(C, width=8, out_dim=8).eval()
    x = torch.rand(2, C, 32, 32)
    mask = torch.ones(2, C, dtype=torch.bool)
    mask[:, 3] = False
    y = x.clone()
    y[:, 3] = 123.0
    torch.testing.assert_close(enc(x, mask), enc(y, mask))


@pytest.mark.parametrize("pool", ["max", "avg", "avgmax"])
def test_smallcnn_pools_the_feature_map_as_configured(pool: str) -> None:
    torch.manual_seed(0)
    enc = SmallCNN(C, width=8, out_dim=6, pool=pool).eval()
    x = torch.rand(3, C, 32, 32)
    with torch.no_grad():
        f = enc.features(x)
        parts = {"max": [f.amax(dim=(2, 3))], "avg": [f.mean(dim=(2, 3))]}
        parts["avgmax"] = parts["avg"] + parts["max"]
        expected = enc.proj(torch.cat(parts[pool], dim=1))
        torch.testing.assert_close(enc(x), expected)


def test_smallcnn_rejects_unknown_pool() -> None:
    with pytest.raises(ConfigError, match="pool"):
        SmallCNN(C, pool="median")


def test_inflate_conv_weight_is_mean_rgb_times_3_over_c() -> None:
    w = torch.randn(4, 3, 3, 3)
    out = inflate_conv_weight(w, 5)
    assert out.shape == (4, 5, 3, 3)
    for c in range(5):
        torch.testing.assert_close(out[:, c], w.mean(dim=1) * 3 / 5)
    assert inflate_conv_weight(w, 3) is w


def test_pretrained_resnet18_is_loaded_and_inflated(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rgb = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_rgb.pth"
    torch.save(rgb.state_dict(), path)
    enc = TorchvisionEncoder(C, arch="resnet18", pretrained_path=str(path))
    assert enc.pretrained_source == str(path)
    conv1 = enc.backbone.conv1.weight.detach()
    assert conv1.shape == (64, C, 7, 7)
    expected = rgb.conv1.weight.detach().mean(dim=1, keepdim=True) * 3 / C
    torch.testing.assert_close(conv1, expected.expand(-1, C, -1, -1))
    torch.testing.assert_close(enc.backbone.layer3[0].conv1.weight, rgb.layer3[0].conv1.weight)
    torch.testing.assert_close(enc.backbone.bn1.running_var, rgb.bn1.running_var)
    # a grey image replicated over C channels activates conv1 as the RGB model does
    grey = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(
        enc.backbone.conv1(grey.expand(-1, C, -1, -1)),
        rgb.conv1(grey.expand(-1, 3, -1, -1)),
        rtol=1e-4,
        atol=1e-5,
    )


def test_pretrained_from_torchvision_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = torchvision_cache_path("resnet18")
    assert path.parent == tmp_path / "checkpoints"
    assert (
        TorchvisionEncoder(C, arch="resnet18", pretrained_from_cache=True).pretrained_source is None
    )
    path.parent.mkdir(parents=True)
    rgb = torchvision.models.resnet18(weights=None)
    torch.save(rgb.state_dict(), path)
    enc = TorchvisionEncoder(C, arch="resnet18", pretrained_from_cache=True)
    assert enc.pretrained_source == str(path)
    assert isinstance(enc.backbone.fc, torch.nn.Identity)  # ImageNet classifier stripped
    torch.testing.assert_close(enc.backbone.layer1[0].conv1.weight, rgb.layer1[0].conv1.weight)


def test_pretrained_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        TorchvisionEncoder(C, arch="resnet18", pretrained_path=str(tmp_path / "nope.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(ConfigError, match="lack"):
        TorchvisionEncoder(C, arch="resnet50", pretrained_path=str(wrong))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        TorchvisionEncoder(C, arch="resnet18", pretrained_path=str(bad))
    with pytest.raises(ConfigError, match="unsupported backbone"):
        TorchvisionEncoder(C, arch="vit_h_14")
