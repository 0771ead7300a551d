"""What the README and docs/ cite exists: a renamed test, module or result file must not leave a claim
pointing at nothing (every claim is backed by a test or a measured file, and the citation is how a reader
finds it)."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Paths written as examples of something that does not exist (an error message's subject, a placeholder).
PLACEHOLDERS = {"configs/X.py", "configs/nope.py"}

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
TEST = re.compile(r"(tests/test_\w+\.py)(?:::(\w+))?")
PATH = re.compile(r"(?<![\w/.])((?:dnd_jax|bench|configs|launch|tests)/[\w./-]+\.(?:py|sh|sbatch)"
                  r"|docs/[\w./-]+\.(?:md|json|png|jsonl))")


def broken(path: Path) -> list[str]:
    """The citations in one Markdown file that do not resolve: relative links, repo paths, test names."""
    text, out = path.read_text(), []
    for m in LINK.finditer(text):
        target = m.group(1)
        if not re.match(r"[a-z]+:", target) and not (path.parent / target).exists():
            out.append(f"link {target}")
    for m in PATH.finditer(text):
        if m.group(1) not in PLACEHOLDERS and not (ROOT / m.group(1)).exists():
            out.append(f"path {m.group(1)}")
    for m in TEST.finditer(text):
        if m.group(2) and (ROOT / m.group(1)).exists():
            tree = ast.parse((ROOT / m.group(1)).read_text())
            if m.group(2) not in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}:
                out.append(f"test {m.group(0)}")
    return out


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_citations_resolve(path):
    assert broken(path) == []


def test_a_broken_citation_is_found(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("see [a](missing.md), [b](https://example.org/x), `dnd_jax/nope.py`, `docs/gone.json`,\n"
                   "`tests/test_docs_links.py::test_citations_resolve`, `tests/test_docs_links.py::test_gone`,\n"
                   "`tests/test_absent.py` and [c](x.md#anchor); configs/X.py is a placeholder\n")
    assert broken(doc) == ["link missing.md", "path dnd_jax/nope.py", "path docs/gone.json",
                           "path tests/test_absent.py", "test tests/test_docs_links.py::test_gone"]
