"""`twinnet docs`: the user docs reach an installed user. The repository's docs/*.md are
their one home; the package reaches them through its `docs` link, which the wheel turns
into copies (scripts/wheel_smoke.sh checks the installed wheel)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from twinnet.cli import build_parser, main
from twinnet.userdocs import doc_files, topics

REPO = Path(__file__).resolve().parents[1]


def test_help_names_the_docs_command(capsys):
    epilog = build_parser().format_help()
    assert "twinnet docs usage" in epilog and "docs/usage.md" not in epilog


def test_docs_lists_every_doc_of_the_repository(capsys):
    assert main(["docs"]) == 0
    listing = capsys.readouterr().out
    shipped = sorted(path.stem for path in (REPO / "docs").glob("*.md"))
    assert sorted(set(topics()) - {"readme"}) == shipped and shipped
    for name in ("readme", "usage", "derivations"):
        assert f"  {name} " in listing
    assert "Backpropagation derivations of the NumPy twin" in listing


def test_a_doc_prints_as_the_repository_holds_it(capsys):
    assert main(["docs", "usage"]) == 0  # stdout is not a terminal here: no pager
    assert capsys.readouterr().out == (REPO / "docs" / "usage.md").read_text(encoding="utf-8")
    assert main(["docs", "readme"]) == 0
    assert capsys.readouterr().out.startswith("# twinnet\n")


def test_one_home_per_doc():
    # The package's docs folder is the repository's, not a copy of it.
    package_docs = Path(__import__("twinnet").__file__).parent / "docs"
    assert package_docs.is_symlink() and package_docs.resolve() == (REPO / "docs").resolve()
    assert all(Path(str(path)).resolve().parent == (REPO / "docs").resolve() for path in doc_files().values())
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "docs/*.md" in package_data["twinnet"]


def test_path_and_unknown_topics(capsys):
    assert main(["docs", "scaling", "--path"]) == 0
    path = capsys.readouterr().out.strip()
    assert os.path.samefile(path, REPO / "docs" / "scaling.md")
    assert main(["docs", "nosuchdoc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "twinnet: error: no doc 'nosuchdoc'; the docs are: readme, usage" in err
    assert main(["docs", "readme", "--path"]) == 2
    assert "twinnet docs readme" in capsys.readouterr().err
