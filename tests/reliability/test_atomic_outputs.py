"""Issue 9.2: a SIGKILL while writing never leaves a truncated file that a later run trusts.

Each test runs the real writer in a child process with one low-level call patched to write part
of its data and then SIGKILL the process (no ``finally``, no ``atexit``), then checks in the
parent that the final name is absent or still holds the previous complete content, and that a
re-run produces the same result as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from immunoplex.io.panel import Panel
from immunoplex.tiles.cache import TileCache
from immunoplex.tiles.params import TilingParams
from tests.reliability.slides import MARKERS, tissue_image, write_ome

pytestmark = pytest.mark.slow  # every test starts a fresh interpreter (seconds each)

KILL = "import os, signal\ndef die():\n    os.kill(os.getpid(), signal.SIGKILL)\n"


def _child(code: str, *args: str) -> int:
    """Run ``code`` in a fresh interpreter; return its exit status (-9 when SIGKILLed)."""
    proc = subprocess.run(
        [sys.executable, "-c", KILL + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode in (0, -9), proc.stderr[-3000:]
    return proc.returncode


def _sha(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


# ---- tile cache ----------------------------------------------------------------------------
def test_tile_cache_killed_mid_build_is_rebuilt(tmp_path: Path) -> None:
    slide = write_ome(tmp_path / "s.ome.tif", tissue_image(size=128))
    root = tmp_path / "cache"
    rc = _child(
        """
        import sys
        import immunoplex.tiles.cache as tc
        from immunoplex.io.panel import Panel
        from immunoplex.tiles.params import TilingParams
        real = tc.iter_tile_chunks
        def first_chunk_then_die(*args, **kwargs):
            for chunk in real(*args, **kwargs):
                yield chunk  # written to the .npy under .tmp-*
                break
            die()
        tc.iter_tile_chunks = first_chunk_then_die
        tc.TileCache(sys.argv[1]).load_or_build(
            sys.argv[2], Panel(["DAPI", "PanCK", "CD8"]), TilingParams(tile_size=16, mpp=1.0))
        """,
        str(root),
        str(slide),
    )
    assert rc == -9
    panel, params = Panel(list(MARKERS)), TilingParams(tile_size=16, mpp=1.0)
    cache = TileCache(root)
    key = cache.key(slide, panel, params)
    assert cache.load(key) is None  # the half-built entry is invisible
    assert not (root / key).exists()
    leftovers = [p.name for p in root.iterdir()]
    assert leftovers and all(n.startswith(".tmp-") for n in leftovers)
    rebuilt = cache.load_or_build(slide, panel, params)
    fresh = TileCache(tmp_path / "fresh").load_or_build(slide, panel, params)
    assert np.array_equal(np.asarray(rebuilt.tiles), np.asarray(fresh.tiles))
    assert np.asarray(rebuilt.tiles)[:, 2].any()


# ---- embedding cache -----------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["npy", "json"])
def test_embedding_cache_killed_mid_save_is_not_trusted(tmp_path: Path, stage: str) -> None:
    from immunoplex.training.embed import EmbeddingCache

    root = tmp_path / "emb"
    rc = _child(
        f"""
        import io, sys
        import numpy as np
        import immunoplex.training.embed as embed
        real_save, real_dumps = np.save, embed.json.dumps
        def half_save(f, arr, *a, **k):
            buf = io.BytesIO(); real_save(buf, arr, *a, **k)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush(); die()
        def dumps_then_die(*a, **k):
            die()
        if "{stage}" == "npy":
            np.save = half_save
        else:
            embed.json.dumps = dumps_then_die
        cache = embed.EmbeddingCache(__import__("pathlib").Path(sys.argv[1]))
        cache.save("k1", np.arange(4000, dtype=np.float32).reshape(100, 40), {{"slide": "s"}})
        """,
        str(root),
    )
    assert rc == -9
    cache = EmbeddingCache(root)
    assert cache.load("k1") is None
    if stage == "npy":
        assert not cache.path("k1").exists()
    emb = np.arange(4000, dtype=np.float32).reshape(100, 40)
    cache.save("k1", emb, {"slide": "s"})
    loaded = cache.load("k1")
    assert loaded is not None and np.array_equal(loaded, emb)


# ---- synthetic generator -------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_synth_killed_mid_slide_completes_identically(tmp_path: Path, tiny_cohort: Path) -> None:
    from immunoplex.synth import generate_cohort

    out = tmp_path / "cohort"
    rc = _child(
        """
        import sys, tifffile
        from immunoplex.synth import generate_cohort
        real = tifffile.TiffWriter.write
        calls = [0]
        def write(self, *a, **k):
            calls[0] += 1
            if calls[0] == 7:  # inside the third slide's pyramid
                self._fh.flush(); die()
            return real(self, *a, **k)
        tifffile.TiffWriter.write = write
        generate_cohort(sys.argv[1], size="tiny", seed=0, workers=1, progress=False)
        """,
        str(out),
    )
    assert rc == -9
    slides = out / "slides"
    finals = sorted(p for p in slides.iterdir() if not p.name.startswith("."))
    assert [p.name for p in slides.iterdir() if p.name.startswith(".")]  # the partial temp file
    assert 1 <= len(finals) < 28
    for p in finals:  # every file under a final name is complete
        assert _sha(p) == _sha(tiny_cohort / "slides" / p.name), p.name
    assert not (out / "manifest.csv").exists()  # tables come after the slides
    first = finals[0].stat().st_mtime_ns
    generate_cohort(out, size="tiny", seed=0, workers=1, progress=False)
    assert finals[0].stat().st_mtime_ns == first  # finished slides are not redone
    assert not [p for p in slides.iterdir() if p.name.startswith(".")]  # temp files removed
    for name in ("manifest.csv", "expression.csv", "truth.csv"):
        assert _sha(out / name) == _sha(tiny_cohort / name), name
    for p in sorted((tiny_cohort / "slides").iterdir()):
        assert _sha(slides / p.name) == _sha(p), p.name


# ---- checkpoints ---------------------------------------------------------------------------
_LIGHTNING_CHILD = """
import shutil, sys
import torch, lightning as L
from torch.utils.data import DataLoader, TensorDataset
from lightning.pytorch.callbacks import ModelCheckpoint
from immunoplex.training.callbacks import AtomicModelCheckpoint

class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__(); self.layer = torch.nn.Linear(4, 1)
    def training_step(self, batch, i):
        return self.layer(batch[0]).pow(2).mean()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

# Lightning writes to tempfile.mkstemp() and shutil.move()s it to the target: across file
# systems (node-local /tmp, run dir on NFS) that move is a copy. Kill the 3rd save mid-copy.
real_move, moves = shutil.move, [0]
def move(src, dst, *a, **k):
    moves[0] += 1
    if moves[0] == 3:
        data = open(src, "rb").read()
        with open(dst, "wb") as f:
            f.write(data[: len(data) // 2])
        die()
    return real_move(src, dst, *a, **k)
shutil.move = move
cls = AtomicModelCheckpoint if sys.argv[2] == "atomic" else ModelCheckpoint
ckpt = cls(dirpath=sys.argv[1], monitor=None, every_n_train_steps=1, save_last=True,
           save_top_k=0)
data = DataLoader(TensorDataset(torch.randn(32, 4)), batch_size=4)
trainer = L.Trainer(max_epochs=1, callbacks=[ckpt], logger=False, enable_progress_bar=False,
                    enable_model_summary=False, accelerator="cpu")
trainer.fit(Tiny(), data)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["lightning", "atomic"])
def test_checkpoint_killed_mid_write(tmp_path: Path, kind: str) -> None:
    """Plain ModelCheckpoint can leave a truncated last.ckpt; AtomicModelCheckpoint cannot."""
    assert _child(_LIGHTNING_CHILD, str(tmp_path), kind) == -9
    last = tmp_path / "last.ckpt"
    assert last.exists()
    if kind == "lightning":
        with pytest.raises(Exception):  # noqa: B017 - any unpickling error: the file is broken
            torch.load(last, map_location="cpu", weights_only=True)
    else:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == 2  # the previous complete save


def test_atomic_save_killed_mid_write_keeps_previous(tmp_path: Path) -> None:
    target = tmp_path / "model.ckpt"
    from immunoplex.training.checkpoint import atomic_save

    atomic_save({"v": torch.ones(3)}, target)
    rc = _child(
        """
        import sys, torch
        from immunoplex.training import checkpoint
        def half_save(obj, f, *a, **k):
            with open(f, "wb") as fh:
                fh.write(b"PK\\x03\\x04" + b"\\0" * 100)
            die()
        checkpoint.torch.save = half_save
        checkpoint.atomic_save({"v": torch.zeros(3)}, sys.argv[1])
        """,
        str(target),
    )
    assert rc == -9
    assert torch.load(target, weights_only=True)["v"].sum() == 3
    assert os.listdir(tmp_path) != ["model.ckpt"]  # the temp file is left, under a dot name
    assert all(n == "model.ckpt" or n.startswith(".model.") for n in os.listdir(tmp_path))
