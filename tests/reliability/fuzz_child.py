"""Byte-mutation fuzzing of the readers, run in a child process under an address-space limit.

    python fuzz_child.py {tiff,manifest,expression} WORK_DIR MAX_EXAMPLES

Exits 0 when every mutated input either parses or raises an ``ImmunoplexError``; any other
exception (or a MemoryError from a header that claims a huge image) fails with hypothesis's
falsifying example on stderr. The parent sets RLIMIT_AS so unbounded allocation cannot go unseen.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from immunoplex.data.cohort import load_cohort
from immunoplex.errors import ImmunoplexError
from immunoplex.expression.io import read_expression
from immunoplex.io import open_slide

REGION = 96  # reads are bounded: a fuzzed header may claim any size


def _ome_bytes(compression: str | None, tile: tuple[int, int] | None) -> bytes:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, (3, 64, 48), dtype=np.uint16)
    buf = io.BytesIO()
    meta = {
        "axes": "CYX",
        "Channel": {"Name": ["DAPI", "PanCK", "CD8"]},
        "PhysicalSizeX": 0.5,
        "PhysicalSizeY": 0.5,
    }
    with tifffile.TiffWriter(buf, ome=True) as tw:
        tw.write(data, metadata=meta, compression=compression, tile=tile, photometric="minisblack")
    return buf.getvalue()


def _plain_bytes() -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.arange(2 * 40 * 40, dtype=np.float32).reshape(2, 40, 40))
    return buf.getvalue()


SEEDS = {
    "tiff": [_ome_bytes("zlib", (16, 16)), _ome_bytes(None, None), _plain_bytes()],
    "manifest": [
        b"slide_id,patient_id,image,label,cohort,treatment,sclever1,split,mpp\n"
        b"s1,p1,a.tif,1,c1,anti-PD-1,2.5,train,0.5\n"
        b"s2,p1,a.tif,R,c1,anti-PD-1,2.5,train,\n"
        b"s3,p2,a.tif,NR,c2,anti-PD-1,,test,0.5\n"
    ],
    "expression": [
        b"patient_id,CD8A,GZMA,CXCL9\np1,1.5,2,0\np2,3,4.25,1e3\np3,0,0,7\n",
        b"gene\tp1\tp2\tp3\nCD8A\t1\t2\t3\nGZMA\t4\t5\t6\nSTAB1\t0\t1\t0\n",
    ],
}


@st.composite
def mutated(draw: st.DrawFn, target: str) -> bytes:
    """A seed input with 1-8 byte flips, insertions, deletions, or a truncation."""
    data = bytearray(draw(st.sampled_from(SEEDS[target])))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, ord(","), ord("\n"), ord('"')]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def _exercise_tiff(path: Path) -> None:
    with open_slide(path, mpp=0.5) as s:
        for level, (h, w) in enumerate(s.levels):
            s.read_region(level, 0, 0, min(h, REGION), min(w, REGION))
            s.read_region(level, max(h - 8, 0), max(w - 8, 0), 16, 16)  # crosses the edge
        s.describe()


def main() -> None:
    target, work, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    work.mkdir(parents=True, exist_ok=True)
    np.zeros(1)  # noqa: B018 - warm imports before the limit bites
    (work / "a.tif").write_bytes(SEEDS["tiff"][0])

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutated(target))
    def run(blob: bytes) -> None:
        name = {"tiff": "x.ome.tif", "manifest": "manifest.csv", "expression": "expr.csv"}[target]
        path = work / name
        path.write_bytes(blob)
        try:
            if target == "tiff":
                _exercise_tiff(path)
            elif target == "manifest":
                load_cohort(path, clinical_columns=["sclever1"])
            else:
                read_expression(path)
        except ImmunoplexError as err:
            assert "\n" not in str(err), repr(str(err))

    run()
    print(f"fuzz {target}: {n} examples, no foreign exception")


if __name__ == "__main__":
    main()
