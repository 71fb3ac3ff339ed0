"""The documents' claims point at files that exist, and their links at headings that exist.

Every number in the README's Results section and in RESULTS.md names the JSON it was
read from, and the exports and checkpoints it was measured on; a renamed or deleted
file would leave a number nobody can trace. ``NAME`` marks a placeholder in a
command template, not a file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: files that documents name: a results JSON, an ONNX export or a checkpoint
ARTIFACT = re.compile(
    r"(?:results/[\w{},.\-]+?\.json|export/[\w{},.\-]+?\.onnx|models/[\w{},.\-]+?\.pt)"
)
LINK = re.compile(r"\]\(([\w.\-/]+\.md)(?:#([\w\-]+))?\)")


def expand_braces(text: str) -> list[str]:
    """``a_{b,c}.json`` -> ``[a_b.json, a_c.json]``, as the shell expands it."""
    match = re.search(r"\{([^{}]*)\}", text)
    if not match:
        return [text]
    head, tail = text[: match.start()], text[match.end() :]
    return [name for alt in match.group(1).split(",") for name in expand_braces(head + alt + tail)]


def slug(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading (GitHub's rule)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def results_text() -> dict[str, str]:
    """The README's Results section and the whole of RESULTS.md."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Results") : readme.index("## Using it")]
    return {"README.md (Results)": section, "RESULTS.md": (ROOT / "RESULTS.md").read_text()}


def named_artifacts(text: str) -> set[str]:
    # a path may be broken over two lines inside a code span; join lines first
    joined = text.replace("\n", "")
    names = {name for found in ARTIFACT.findall(joined) for name in expand_braces(found)}
    return {name for name in names if "NAME" not in name}


def test_expand_braces_and_slug():
    assert expand_braces("r/a_{x,y}_{1,2}.json") == [
        "r/a_x_1.json", "r/a_x_2.json", "r/a_y_1.json", "r/a_y_2.json"]
    assert slug("Streaming detection (long audio)") == "streaming-detection-long-audio"
    assert slug("Clips: raw S4, the MFCC models") == "clips-raw-s4-the-mfcc-models"


@pytest.mark.parametrize("document", sorted(results_text()))
def test_every_named_result_file_exists(document):
    names = named_artifacts(results_text()[document])
    assert len(names) > 20, f"{document}: the pattern found only {sorted(names)}"
    missing = sorted(name for name in names if not (ROOT / name).is_file())
    assert not missing, f"{document} names files that do not exist: {missing}"


def test_links_between_documents_resolve():
    documents = [ROOT / "README.md", ROOT / "RESULTS.md", ROOT / "ARCHITECTURE.md"]
    checked = 0
    for document in documents:
        for target, anchor in LINK.findall(document.read_text()):
            path = ROOT / target
            assert path.is_file(), f"{document.name} links to {target}, which does not exist"
            if anchor:
                headings = [line.lstrip("#") for line in path.read_text().splitlines()
                            if line.startswith("#")]
                assert anchor in {slug(h) for h in headings}, (
                    f"{document.name} links to {target}#{anchor}, a heading {target} lacks")
            checked += 1
    assert checked >= 5
