"""One virtualenv per system under .venv-bench/: the peers pin conflicting versions of redis
(kombu, arq, taskiq-redis, saq, dramatiq each want their own), so none shares aiotq's
environment, and aiotq itself runs from a plain `pip install .` (no dev extras), as a user
would have it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "aiotq": ["-e", str(ROOT)],
    "celery": ["celery[redis]>=5.4", "gevent>=24.2"],
    "arq": ["arq>=0.26"],
    "taskiq": ["taskiq>=0.11", "taskiq-redis>=1.0", "taskiq-aio-pika>=0.6"],
    "saq": ["saq[redis]>=0.24", "typing_extensions"],
    "dramatiq": ["dramatiq[rabbitmq,redis]>=2.0"],
    # raw aio-pika publishing (the RabbitMQ floor the sends are measured against)
    "raw": ["aio-pika>=9.4", "uvloop>=0.19"],
}


def python_for(system: str) -> str:
    """The interpreter of the system's environment, created and installed on first use."""
    env = ROOT / ".venv-bench" / system
    python = env / "bin" / "python"
    wanted = hashlib.sha1(" ".join(PACKAGES[system]).encode()).hexdigest()
    stamp = env / ".installed"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"installing {system} into {env} ...", file=sys.stderr, flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES[system]], check=True)
        stamp.write_text(wanted)
    return str(python)


if __name__ == "__main__":
    for name in sys.argv[1:] or list(PACKAGES):
        print(name, python_for(name))
