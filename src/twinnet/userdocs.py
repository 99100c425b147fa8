"""The user docs, as installed: what ``twinnet docs`` prints.

One home per document: the repository's ``docs/*.md`` are the files. The package reaches
them through ``twinnet/docs``, a symbolic link to the repository's ``docs`` folder, so a
checkout (and an editable install) reads them in place, and building the wheel copies
them in as package data (``docs/*.md`` in pyproject.toml; a wheel holds no links). The
README is not in that folder: it is the package's long description, so it is read back
from the installed metadata.
"""

from __future__ import annotations

from importlib import metadata, resources
from importlib.resources.abc import Traversable

from twinnet.errors import TwinnetError

README = "readme"
FIRST = ("readme", "usage")  # listed first; the rest in alphabetical order


def doc_files() -> dict[str, Traversable]:
    """The shipped docs by topic (a file's stem: ``usage`` for docs/usage.md)."""
    folder = resources.files("twinnet") / "docs"
    if not folder.is_dir():
        return {}
    return {item.name.removesuffix(".md"): item for item in folder.iterdir()
            if item.name.endswith(".md") and item.is_file()}


def topics() -> list[str]:
    """Every topic, ``readme`` and ``usage`` first."""
    names = {README, *doc_files()}
    return [*(name for name in FIRST if name in names), *sorted(names - set(FIRST))]


def read_me() -> str:
    """The README, from the installed package's metadata (its long description)."""
    try:
        text = metadata.metadata("twinnet").get_payload()
    except metadata.PackageNotFoundError:
        text = None
    if not text:
        raise TwinnetError("the README is not in this installation's metadata")
    return str(text)


def doc_text(topic: str) -> str:
    """The Markdown text of ``topic``; a TwinnetError naming the topics if it is unknown."""
    if topic == README:
        return read_me()
    files = doc_files()
    if topic.removesuffix(".md") not in files:
        raise TwinnetError(f"no doc {topic!r}; the docs are: {', '.join(topics())}")
    return files[topic.removesuffix(".md")].read_text(encoding="utf-8")


def title(topic: str) -> str:
    """A doc's first Markdown heading, without its ``#``."""
    for line in doc_text(topic).splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return topic
