"""Issue 9.4: byte-mutation fuzzing of the TIFF, manifest and expression readers (slow tier).

Each target runs ``fuzz_child.py`` in a subprocess under RLIMIT_AS (so an allocation driven by a
fuzzed header fails loudly instead of swapping), with hypothesis bounded by ``max_examples`` and
pytest-timeout guarding against hangs. Any exception other than an ``ImmunoplexError`` (or a
multi-line message) fails with hypothesis's falsifying example.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from immunoplex.errors import SlideReadError
from immunoplex.io import open_slide

CHILD = Path(__file__).with_name("fuzz_child.py")
ADDRESS_SPACE = 3 << 30  # 3 GiB: numpy/pandas/tifffile need ~1 GiB of address space
EXAMPLES = {"tiff": 400, "manifest": 400, "expression": 400}


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", sorted(EXAMPLES))
def test_fuzzed_inputs_raise_only_project_errors(target: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(CHILD), target, str(tmp_path), str(EXAMPLES[target])],
        capture_output=True,
        text=True,
        timeout=110,
        preexec_fn=_limit,
        cwd=Path(__file__).resolve().parents[2],
    )
    tail = "\n".join(ln for ln in proc.stderr.splitlines() if "raised TiffFileError" not in ln)
    assert proc.returncode == 0, tail[-4000:]
    assert f"fuzz {target}: {EXAMPLES[target]} examples" in proc.stdout


def _patch_dims(path: Path, width: int, height: int) -> None:
    """Rewrite ImageWidth/ImageLength of the first page in place (LONG tags)."""
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        spots = [(tags[n].valueoffset, tags[n].dtype) for n in ("ImageWidth", "ImageLength")]
    raw = bytearray(path.read_bytes())
    for (off, dtype), value in zip(spots, (width, height), strict=True):
        n = 2 if int(dtype) == 3 else 4
        raw[off : off + n] = min(value, 2 ** (8 * n) - 1).to_bytes(n, "little")
    path.write_bytes(bytes(raw))


@pytest.mark.timeout(60)
def test_header_claiming_a_huge_image_does_not_allocate_it(tmp_path: Path) -> None:
    """A 4-billion-pixel claim in a 10 kB file: reading a small region is bounded or refused."""
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, np.ones((64, 64), np.uint16), tile=(16, 16))
    _patch_dims(path, 65535, 65535)
    try:
        with open_slide(path, mpp=1.0) as s:
            assert s.levels[0] == (65535, 65535)  # metadata only; nothing allocated
            region = s.read_region(0, 0, 0, 32, 32)
            assert region.shape == (1, 32, 32)
            with pytest.raises(SlideReadError) as err:  # tiles the file does not have
                s.read_region(0, 60000, 60000, 32, 32)
            assert str(path) in str(err.value) and "\n" not in str(err.value)
    except SlideReadError as err:  # refusing the file outright is also acceptable
        assert str(path) in str(err) and "\n" not in str(err)
