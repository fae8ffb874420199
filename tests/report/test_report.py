"""The exploratory report on tiny generated chunks and a real extraction: every section, self-contained."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

from dfdc.config import ReportConfig
from dfdc.report.eda import SECTIONS, build_report, write_report

CFG = ReportConfig(videos=2, frames=2, pairs=2, top_originals=3)
PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _section(page: str, anchor: str) -> str:
    start = page.index(f'<section id="{anchor}">')
    return page[start : page.index("</section>", start)]


def test_every_section_is_built_with_embedded_figures(demo, extracted, extract_cfg, tmp_path: Path) -> None:
    chunk = demo.chunk_dir.name
    page = build_report([demo.chunk_dir], extracted.faces_dir, CFG, extract_cfg)
    out = write_report(page, tmp_path / "reports" / "eda.html")
    assert out.read_text(encoding="utf-8") == page

    for anchor, title in SECTIONS:
        assert f'<section id="{anchor}"><h2>{title}</h2>' in page
    images = PNG.findall(page)
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG")
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r'(src|href)="(https?:|file:|/)', page)

    n_real = int((demo.manifest.query("chunk == @chunk")["label"] == "REAL").sum())
    n_fake = int((demo.manifest.query("chunk == @chunk")["label"] == "FAKE").sum())
    balance = _section(page, "balance")
    assert f"<td>{chunk}</td>" in balance and f"<td>{n_real + n_fake}</td>" in balance
    assert f"<td>{n_fake}</td>" in balance
    assert "Every listed file exists" in _section(page, "files")
    assert "<td>3</td>" in _section(page, "originals")  # 3 fakes per original in the demo spec
    for anchor in ("frames", "difference", "crops", "detectors"):
        assert PNG.search(_section(page, anchor)), f"{anchor} has no figure"
    assert len(PNG.findall(_section(page, "difference"))) == CFG.pairs
    detectors = _section(page, "detectors")
    for name in ("mtcnn", "haar_frontal", "haar_profile", "haar_eyes"):
        assert f"<td>{name}</td>" in detectors
    mtcnn = re.search(r"<td>mtcnn</td>\s*<td>(\d+)</td>\s*<td>(\d+)</td>", detectors)
    assert mtcnn and int(mtcnn.group(1)) == 2 * CFG.videos * CFG.frames and int(mtcnn.group(2)) > 0


def test_files_vs_metadata_differences_are_listed(demo, extract_cfg, tmp_path: Path) -> None:
    chunk = tmp_path / demo.chunk_dir.name
    shutil.copytree(demo.chunk_dir, chunk)
    listed = sorted(chunk.glob("*.mp4"))
    listed[0].rename(chunk / "zzzzzzzzzz.mp4")  # one listed file gone, one unlisted file present
    broken = tmp_path / "dfdc_train_part_9"
    broken.mkdir()
    (broken / "metadata.json").write_text("[")
    page = build_report([chunk, broken], None, CFG, extract_cfg)
    files = _section(page, "files")
    assert f"<td>{listed[0].name}</td>" in files and "listed, file missing" in files
    assert "<td>zzzzzzzzzz.mp4</td>" in files and "on disk, not listed" in files
    assert "<td>dfdc_train_part_9</td>" in files and "unreadable: invalid JSON" in files
    assert "no face index" in _section(page, "crops")
