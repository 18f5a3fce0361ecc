"""Celery's own virtualenv (.venv-celery at the repo root): Celery pins a redis-py that
conflicts with aiotq's, so it never shares aiotq's environment. Installed once per machine
(a stamp names what was installed), then reused by every test run."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = ROOT / ".venv-celery"
PACKAGES = ["celery[redis,msgpack]==5.7.0"]


def celery_python() -> str:
    """The interpreter of Celery's environment, created and installed on first use."""
    python = ENV / "bin" / "python"
    wanted = hashlib.sha1(" ".join(PACKAGES).encode()).hexdigest()
    stamp = ENV / ".installed"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ENV)], check=True, timeout=300)
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"installing {' '.join(PACKAGES)} into {ENV} ...", file=sys.stderr, flush=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, *PACKAGES], check=True, timeout=900)  # a registry that hangs
        stamp.write_text(wanted)
    return str(python)


if __name__ == "__main__":
    print(celery_python())
