"""The docs site builds with --strict: a broken link, a missing page in the nav or an API
reference entry that no longer exists fails here (and in `make lint`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_docs_site_builds_strict_with_the_api_reference(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    reference = (site / "reference" / "index.html").read_text()
    for name in ("aiotq.App", "aiotq.Task", "aiotq.AsyncResult", "aiotq.chord"):
        assert name in reference, f"{name} missing from the API reference"
    assert (site / "canvas" / "index.html").exists()
