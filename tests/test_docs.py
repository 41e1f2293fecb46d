"""The documents name paths that exist: every path in README.md and docs/*.md (in backticks or
as a link target) is a file or folder of the repository, and every bare file name is the name
of one, so a move or a rename cannot leave a guide pointing at nothing."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOKEN = re.compile(r"`([^`\s]+)`|\]\(([^)\s]+)\)")
FILE_NAME = re.compile(r"^[\w.-]+\.(py|md|yaml|yml|toml|json|txt|sh|cfg|ini|parquet|csv)$")
# What the platform writes when it runs (a model package's files, a report): named in the
# guides, never in a clean clone.
PRODUCED = {"manifest.json", "model.lgb.txt", "monitor.json", "model.onnx", "report.html"}


def tracked() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if (ROOT / line).exists()]


def ignored(path: str) -> bool:
    """Generated outputs (data/, model packages, results) are git-ignored build outputs."""
    # A folder pattern (`models/packages/`) matches only a name that ends with a slash when
    # the folder is absent, as it is in a clean clone.
    forms = {path, path.rstrip("/") + "/"}
    return any(
        subprocess.run(
            ["git", "check-ignore", "-q", "--no-index", form], cwd=ROOT, check=False
        ).returncode
        == 0
        for form in forms
    )


def named_paths(text: str) -> set[str]:
    found: set[str] = set()
    for match in TOKEN.finditer(text):
        for token in (match.group(1) or match.group(2)).split(","):
            token = token.split("#")[0].rstrip(".,:;)")
            if not token or "://" in token or token.startswith(("/", "-", "$", "~")):
                continue  # URLs, HTTP routes, options, variables
            if any(c in token for c in "<>*{}=|"):
                continue  # placeholders and globs
            if token.startswith("..."):
                continue  # an elided path in prose
            last = token.rstrip("/").rsplit("/", 1)[-1]
            top = token.split("/", 1)[0]
            if "/" in token and not (token.endswith("/") or "." in last or (ROOT / top).exists()):
                continue  # `name/version` of a model package, not a path
            if "/" in token or FILE_NAME.match(token):
                found.add(token)
    return found


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_document_names_exists(document: Path) -> None:
    files = tracked()
    names = {Path(f).name for f in files} | {Path(f).parent.name for f in files}
    missing = []
    for token in sorted(named_paths(document.read_text())):
        if "/" in token:
            candidates = [ROOT / token, document.parent / token]
            # A path inside a package the sentence names (`routes/score.py`): any tracked path
            # ending with it.
            if any(p.exists() for p in candidates) or ignored(token):
                continue
            if any(f == token.rstrip("/") or f.endswith("/" + token.rstrip("/")) for f in files):
                continue
            folder = token.rstrip("/") + "/"
            if any(f.startswith(folder) or ("/" + folder) in f for f in files):
                continue
            missing.append(token)
        elif token not in names and token not in PRODUCED:
            missing.append(token)
    assert not missing, f"{document.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_the_check_finds_a_wrong_path() -> None:
    assert named_paths("see `scoring_service/no_such.py` and [x](docs/none.md)") == {
        "scoring_service/no_such.py",
        "docs/none.md",
    }
    assert named_paths("`GET /v1/x`, `<domain>/x.py`, `https://a/b`, `--flag`") == set()
