"""The README's figures are the committed report's: its generated blocks, regenerated from
docs/report's runs, must read exactly as committed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from twinnet.errors import TwinnetError
from twinnet.presets import load_presets
from twinnet.report import README_BLOCKS, blocks_in, readme_blocks, readme_blocks_of, with_blocks

REPO = Path(__file__).resolve().parents[1]


def test_readme_figures_are_those_of_the_committed_report():
    committed = blocks_in(REPO / "README.md")
    regenerated = readme_blocks_of(REPO / "docs" / "report")
    for name in README_BLOCKS:
        assert committed[name] == regenerated[name], (
            f"README.md's block {name!r} disagrees with docs/report; rewrite it with "
            "`twinnet report --out docs/report --seeds 5` (which reuses every finished run)")


def test_readme_has_no_placeholders_and_links_that_exist():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "TODO" not in readme and "{" not in readme
    assert len(readme.splitlines()) <= 170
    for target in ("docs/report/REPORT.md", "docs/derivations.md", "docs/performance.md",
                   "docs/architecture.md", "docs/scaling.md", "LICENSE"):
        assert f"]({target})" in readme, target
        assert (REPO / target).exists(), target


def fake_run(preset, k: int, correct: int) -> dict:
    config = {"seed": preset.config.seed + k}
    return {"config": config, "final": {"test": {"accuracy": correct / 10_000}}, "wall_seconds": 60.0}


def test_a_changed_figure_changes_the_block():
    """The blocks are computed from the runs, so a stale README cannot pass the test above."""
    presets = load_presets()
    runs = {p.id: [fake_run(p, k, 9_900 + k) for k in range(3)] for p in presets}
    blocks = readme_blocks(presets, runs, 3, [])
    assert "| cnn | P1:d 99.01 ± 0.01% | P2:e 99.01 ± 0.01% | +0.000 pp [+0.000, +0.000] pp |" in \
        blocks["results"]
    assert "12 runs' run time in docs/report sums to 720 s" in blocks["report-time"]
    changed = copy.deepcopy(runs)
    p1d = next(p for p in presets if p.label == "P1:d")
    changed[p1d.id][1]["final"]["test"]["accuracy"] = 0.9950
    assert readme_blocks(presets, changed, 3, [])["results"] != blocks["results"]


def test_blocks_are_replaced_between_their_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro <!-- report-time:start -->old<!-- report-time:end --> more\n"
                      "<!-- results:start -->\nold table\n<!-- results:end -->\nend\n")
    assert blocks_in(readme) == {"report-time": "old", "results": "\nold table\n"}
    updated = with_blocks(readme, {"report-time": "new", "results": "\nnew table\n"})
    assert updated == ("intro <!-- report-time:start -->new<!-- report-time:end --> more\n"
                       "<!-- results:start -->\nnew table\n<!-- results:end -->\nend\n")
    readme.write_text("no markers here\n")
    with pytest.raises(TwinnetError, match="needs one block report-time"):
        blocks_in(readme)


def test_report_into_docs_report_rewrites_the_readme(tmp_path, monkeypatch, mnist_path, capsys):
    """`twinnet report --out docs/report` over the committed runs trains nothing and writes
    the README's blocks; a README without them is refused before any work starts."""
    import shutil

    import twinnet.report

    shutil.copytree(REPO / "docs" / "report", tmp_path / "docs" / "report")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- report-time:start -->?<!-- report-time:end -->\n\n"
                      "<!-- results:start -->\n<!-- results:end -->\n")
    monkeypatch.setattr(twinnet.report, "REPOSITORY", tmp_path)
    twinnet.report.generate_report(out=tmp_path / "docs" / "report", data_dir=mnist_path, seeds=5)
    assert "finished run(s); nothing to train" in capsys.readouterr().out
    assert blocks_in(readme) == blocks_in(REPO / "README.md")

    readme.write_text("# no blocks\n")
    with pytest.raises(TwinnetError, match="needs one block"):
        twinnet.report.generate_report(out=tmp_path / "docs" / "report", data_dir=mnist_path, seeds=5)
