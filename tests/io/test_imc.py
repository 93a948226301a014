"""IMC layouts: steinbock panel.csv, raw .txt, anonymous TIFFs named from outside, .mcd files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
import pytest
import tifffile

from immunoplex.errors import ManifestError, SlideReadError
from immunoplex.io import open_slide
from immunoplex.io.imc import parse_channel
from immunoplex.io.names import ChannelNames

STEINBOCK = "imc_steinbock/img/20210305_NE_mockData2_s0_a1_ac_fullFiltered.tiff"
RAW_TXT = "imc_raw_txt/20210305_NE_mockData2_ROI_002_2.txt"
CYTOMAPPER = "imc_cytomapper/E34_imc.tiff"
CYTOMAPPER_NAMES = ["H3", "CD99", "PIN", "CD8a", "CDH"]


@pytest.mark.realdata
def test_steinbock_folder_opens_with_panel_names(realdata: Path) -> None:
    p = realdata / STEINBOCK
    with open_slide(p) as s:
        assert s.channels == ["Ag107", "Cytokeratin 5", "Laminin", "YBX1", "H3K27Ac"]
        assert s.channel_labels == ["Ag107", "Pr141", "Sm147", "Eu153", "Yb172"]
        assert s.channel_source == f"panel {realdata / 'imc_steinbock' / 'panel.csv'}"
        assert s.mpp == 1.0  # IMC's native resolution (the TIFF records none)
        assert s.dtype == np.uint16 and s.levels == [(87, 103)]
        np.testing.assert_array_equal(s.read_region(0, 0, 0, 87, 103), tifffile.imread(p))


@pytest.mark.realdata
def test_raw_txt_parsed_names_and_a_hand_computed_pixel(realdata: Path) -> None:
    p = realdata / RAW_TXT
    table = pd.read_csv(p, sep="\t")
    with open_slide(p) as s:
        assert s.format == "imc-txt" and s.mpp == 1.0
        assert s.channels == ["Ag107", "Cytoker", "Laminin", "YBX1", "H3K27Ac"]
        assert s.channel_labels == ["Ag107", "Pr141", "Sm147", "Eu153", "Yb172"]
        assert s.levels == [(int(table["Y"].max()) + 1, int(table["X"].max()) + 1)]
        img = s.read_region(0, 0, 0, *s.levels[0])
    # the brightest Cytokeratin pixel of the table, placed by its X/Y columns
    col = "Cytoker_651((3356))Pr141(Pr141Di)"
    row = table.loc[table[col].idxmax()]
    assert img[1, int(row["Y"]), int(row["X"])] == pytest.approx(float(row[col]))
    assert img[1].sum() == pytest.approx(table[col].sum(), rel=1e-5)


def test_parse_channel_headers() -> None:
    assert parse_channel("Cytoker_651((3356))Pr141(Pr141Di)") == ("Cytoker", "Pr141")
    assert parse_channel("107Ag(Ag107Di)") == ("Ag107", "Ag107")
    assert parse_channel("CD45(Sm152Di)") == ("CD45", "Sm152")
    assert parse_channel("DNA1_Ir191(Ir191Di)") == ("DNA1", "Ir191")


@pytest.mark.realdata
def test_cytomapper_named_from_outside(realdata: Path, tmp_path: Path) -> None:
    p = realdata / CYTOMAPPER
    with open_slide(p) as s:
        assert s.anonymous and s.channels[0] == "Channel 0"
    given = ChannelNames.of(CYTOMAPPER_NAMES, "manifest column 'channels'")
    with open_slide(p, channel_names=given) as s:
        assert s.channels == CYTOMAPPER_NAMES
        assert s.channel_source == "manifest column 'channels'"
    names = tmp_path / "names.txt"
    names.write_text("# cytomapper order\n" + "\n".join(CYTOMAPPER_NAMES) + "\n")
    with open_slide(p, names_file=names) as s:
        assert s.channels == CYTOMAPPER_NAMES and str(names) in s.channel_source
    with pytest.raises(SlideReadError, match=r"gives 4 channel names but the image has 5"):
        open_slide(p, channel_names=CYTOMAPPER_NAMES[:4])


def _anonymous_tiff(path: Path, c: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.arange(c * 16 * 16, dtype=np.uint16).reshape(c, 16, 16))
    return path


def test_name_precedence(tmp_path: Path) -> None:
    img = _anonymous_tiff(tmp_path / "run" / "img" / "a.tiff")
    names = tmp_path / "names.txt"
    names.write_text("N1\nN2\nN3\n")
    with open_slide(img, names_file=names) as s:  # no panel: the names file
        assert s.channels == ["N1", "N2", "N3"]
    (tmp_path / "run" / "panel.csv").write_text(
        "channel,name,keep\nIr191,DNA,1\nX1,skip,0\nPr141,CK,1\nDy162,CD8,1\n"
    )
    with open_slide(img, names_file=names) as s:  # the panel in the parent wins over the file
        assert s.channels == ["DNA", "CK", "CD8"] and s.mpp == 1.0
    with open_slide(img, channel_names=["A", "B", "C"]) as s:  # the manifest wins over all
        assert s.channels == ["A", "B", "C"]
    (tmp_path / "run" / "img" / "panel.csv").write_text("name\nP\nQ\n")  # beside: nearer wins
    with pytest.raises(
        SlideReadError, match=r"panel.csv gives 2 channel names but the image has 3"
    ):
        open_slide(img)


def test_bad_panels_and_names(tmp_path: Path) -> None:
    img = _anonymous_tiff(tmp_path / "img" / "a.tiff")
    panel = tmp_path / "panel.csv"
    panel.write_text("channel,keep\nIr191,1\nPr141,1\nDy162,1\n")
    with pytest.raises(SlideReadError, match=r"panel.csv: channel panel has no 'name' column"):
        open_slide(img)
    panel.write_text("channel,name\nIr191,DNA\nPr141,DNA\nDy162,CD8\n")
    with pytest.raises(SlideReadError, match=r"panel.csv: duplicated channel name 'DNA'"):
        open_slide(img)
    panel.unlink()
    with pytest.raises(SlideReadError, match="duplicated channel name 'A'"):
        open_slide(img, channel_names=["A", "B", "A"])


def test_txt_without_xy_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "roi.txt"
    bad.write_text(
        "Start_push\tEnd_push\tPushes_duration\tX\tZ\tCD8(Dy162Di)\n1\t2\t3\t0\t0\t1.0\n"
    )
    with pytest.raises(SlideReadError) as info:
        open_slide(bad)
    assert str(info.value).startswith(f"{bad}: IMC .txt has no 'Y' column")
    assert "\n" not in str(info.value)


def test_manifest_channels_column_is_validated(tmp_path: Path) -> None:
    from immunoplex.data.cohort import load_cohort, slide_channel_names

    img = _anonymous_tiff(tmp_path / "a.tiff")
    m = tmp_path / "m.csv"
    pd.DataFrame(
        {"slide_id": ["s"], "patient_id": ["p"], "image": [img.name], "channels": ["A; B ;C"]}
    ).to_csv(m, index=False)
    row = next(load_cohort(m).slides.itertuples())
    assert slide_channel_names(row).names == ("A", "B", "C")  # type: ignore[union-attr]
    pd.DataFrame(
        {"slide_id": ["s"], "patient_id": ["p"], "image": [img.name], "channels": ["A;B;A"]}
    ).to_csv(m, index=False)
    with pytest.raises(ManifestError, match=r"m.csv:2: duplicated channel name 'A'"):
        load_cohort(m)


def test_inspect_shows_where_names_came_from(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from immunoplex.cli.inspect import main as inspect_main

    img = _anonymous_tiff(tmp_path / "a.tiff")
    names = tmp_path / "names.txt"
    names.write_text("DAPI\nCD8\nPanCK\n")
    assert inspect_main([str(img), "--channel-names", str(names)]) == 0
    out = capsys.readouterr().out
    assert (
        "channels (3): DAPI, CD8, PanCK" in out and f"names from: channel-names file {names}" in out
    )
    assert inspect_main([str(img), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["channel_source"].startswith("none")


# ----------------------------------------------------------------------------- .mcd
# No .mcd is shared, so the tests write one with the format's published structure: binary
# blocks, then an XML schema (<MCDSchema>, UTF-16-LE) that readimc finds from the end of the
# file. An acquisition's pixels are float32 records X, Y, Z, channel 1..n (raster order)
# between DataStartOffset and DataEndOffset; the schema links Slide -> Panorama ->
# AcquisitionROI -> Acquisition and lists its AcquisitionChannel rows (X, Y, Z, Metal(mass)).
def write_mcd(path: Path, acquisitions: list[dict[str, Any]], raster: bool = True) -> Path:
    """Write ``acquisitions`` (dicts: id, description, data (C, H, W), metals [("Pr", 141)],
    labels, optional mpp); ``raster=False`` writes the pixel records in reverse order."""
    blob = bytearray(b"\x00" * 16)
    acq_xml, ch_xml = [], []
    ch_id = 0
    for a in acquisitions:
        data = np.asarray(a["data"], np.float32)
        c, h, w = data.shape
        yy, xx = np.mgrid[:h, :w]
        rec = np.concatenate([xx[None], yy[None], np.zeros((1, h, w))], 0).astype(np.float32)
        rec = np.concatenate([rec, data], 0).reshape(c + 3, -1).T
        if not raster:
            rec = rec[::-1]
        start = len(blob)
        blob += rec.astype("<f4").tobytes()
        end = len(blob)
        acq_xml.append(
            f"<Acquisition><ID>{a['id']}</ID><Description>{escape(a['description'])}</Description>"
            f"<AcquisitionROIID>{a['id']}</AcquisitionROIID><OrderNumber>{a['id']}</OrderNumber>"
            f"<MaxX>{w}</MaxX><MaxY>{h}</MaxY><DataStartOffset>{start}</DataStartOffset>"
            f"<DataEndOffset>{end}</DataEndOffset><ValueBytes>4</ValueBytes>"
            f"<AblationDistanceBetweenShotsX>{a.get('mpp', 1)}</AblationDistanceBetweenShotsX>"
            f"<AblationDistanceBetweenShotsY>{a.get('mpp', 1)}</AblationDistanceBetweenShotsY>"
            "</Acquisition>"
            f"<AcquisitionROI><ID>{a['id']}</ID><PanoramaID>1</PanoramaID></AcquisitionROI>"
        )
        chans = [("X", "X"), ("Y", "Y"), ("Z", "Z")] + [
            (f"{el}({mass})", lab) for (el, mass), lab in zip(a["metals"], a["labels"])
        ]
        for order, (name, label) in enumerate(chans):
            ch_id += 1
            ch_xml.append(
                f"<AcquisitionChannel><ID>{ch_id}</ID><AcquisitionID>{a['id']}</AcquisitionID>"
                f"<OrderNumber>{order}</OrderNumber><ChannelName>{escape(name)}</ChannelName>"
                f"<ChannelLabel>{escape(label)}</ChannelLabel></AcquisitionChannel>"
            )
    xml = (
        '<MCDSchema xmlns="http://www.fluidigm.com/IMC/MCDSchema_V2_0.xsd">'
        "<Slide><ID>0</ID><Description>test slide</Description>"
        "<ImageStartOffset>0</ImageStartOffset><ImageEndOffset>0</ImageEndOffset></Slide>"
        "<Panorama><ID>1</ID><SlideID>0</SlideID><Description>pano</Description>"
        "<Type>Instrument</Type><ImageStartOffset>0</ImageStartOffset><ImageEndOffset>0</ImageEndOffset></Panorama>"
        + "".join(acq_xml)
        + "".join(ch_xml)
        + "</MCDSchema>"
    )
    blob += xml.encode("utf-16-le")
    Path(path).write_bytes(bytes(blob))
    return Path(path)


def test_mcd_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a1 = (rng.random((3, 20, 30)) * 10).astype(np.float32)
    a2 = rng.random((2, 15, 10)).astype(np.float32)
    p = write_mcd(
        tmp_path / "run.mcd",
        [
            {"id": 1, "description": "ROI_001", "data": a1,
             "metals": [("Pr", 141), ("Dy", 162), ("Ir", 191)],
             "labels": ["Cytoker_651((3356))Pr141", "CD8a_1234", ""]},
            {"id": 2, "description": "tumour core", "data": a2, "mpp": 0.5,
             "metals": [("Ir", 191), ("Ir", 193)], "labels": ["DNA1", "DNA2"]},
        ],
    )  # fmt: skip
    with open_slide(f"{p}#1") as s:
        assert s.format == "imc-mcd" and s.mpp == 1.0
        assert s.channels == ["Cytoker", "CD8a", "Ir191"]  # no label: the metal tag
        assert s.channel_labels == ["Pr141", "Dy162", "Ir191"]
        assert s.describe()["acquisition"] == {"id": 1, "description": "ROI_001"}
        np.testing.assert_array_equal(s.read_region(0, 0, 0, 20, 30), a1)
        np.testing.assert_array_equal(s.read_region(0, 3, 4, 5, 6, [2, 0]), a1[[2, 0], 3:8, 4:10])
        edge = s.read_region(0, 18, 28, 4, 4)
        np.testing.assert_array_equal(edge[:, :2, :2], a1[:, 18:, 28:])
        assert not edge[:, 2:].any()
    with open_slide(f"{p}#tumour core") as s:
        assert s.channels == ["DNA1", "DNA2"] and s.mpp == 0.5
        np.testing.assert_array_equal(s.read_region(0, 0, 0, 15, 10), a2)
    with pytest.raises(SlideReadError, match=r"2 acquisitions .*select one as run.mcd#"):
        open_slide(p)
    with pytest.raises(SlideReadError, match=r"acquisition '7' matches none"):
        open_slide(f"{p}#7")
    # records out of raster order are placed by their X/Y (readimc)
    q = write_mcd(tmp_path / "shuffled.mcd", [{"id": 3, "description": "x", "data": a1,
        "metals": [("Pr", 141), ("Dy", 162), ("Ir", 191)], "labels": ["A", "B", "C"]}],
        raster=False)  # fmt: skip
    with open_slide(q) as s:
        np.testing.assert_array_equal(s.read_region(0, 0, 0, 20, 30), a1)


def test_mcd_acquisitions_become_slides(tmp_path: Path) -> None:
    from immunoplex.inference.inputs import collect_inputs

    d = (np.ones((1, 8, 8)) * 2).astype(np.float32)
    p = write_mcd(
        tmp_path / "run.mcd",
        [{"id": i, "description": f"ROI_{i}", "data": d, "metals": [("Ir", 191)],
          "labels": ["DNA1"]} for i in (1, 2)],
    )  # fmt: skip
    patients = collect_inputs(p)
    assert [x.patient_id for x in patients] == ["run#1", "run#2"]
    assert str(patients[1].slides[0].path) == f"{p}#2"


def test_corrupt_mcd_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mcd"
    bad.write_bytes(b"\x00garbage" * 64)
    with pytest.raises(SlideReadError) as info:
        open_slide(bad)
    msg = str(info.value)
    assert msg.startswith(f"{bad}: corrupt or unreadable MCD file") and "\n" not in msg
    good = write_mcd(tmp_path / "ok.mcd", [{"id": 1, "description": "r", "data":
        np.ones((1, 4, 4), np.float32), "metals": [("Ir", 191)], "labels": ["DNA"]}])  # fmt: skip
    cut = tmp_path / "cut.mcd"
    shutil.copy(good, cut)
    with open(cut, "r+b") as fh:
        fh.truncate(good.stat().st_size - 40)  # the XML schema loses its end
    with pytest.raises(SlideReadError, match=r"cut.mcd: corrupt or unreadable MCD file"):
        open_slide(cut)
