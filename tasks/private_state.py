"""The state folder is private: the folder 700, the files that hold requests, records and the
salt 600.

The folder's mode alone keeps other local users out of everything under it (a directory they
cannot enter hides its files whatever their modes); the files' own modes keep them private when
one is copied out or the folder is opened up. Each store makes its file private where it creates
it (the ledger, the salt, the audit records); `secure_state` tightens what the others created
(MLflow's `mlflow.db`, the adopted recipe) and a folder made by an older version, and runs
whenever a run opens the registry (`tasks.registry.client_for`).
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def private_dir(path: str | Path) -> Path:
    """`path` as a folder only its owner may enter (its missing parents are made as usual)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    if path.stat().st_mode & 0o777 != PRIVATE_DIR:
        path.chmod(PRIVATE_DIR)
    return path


def private_file(path: str | Path) -> None:
    """Make an existing file readable and writable by its owner only."""
    path = Path(path)
    if path.exists() and path.stat().st_mode & 0o777 != PRIVATE_FILE:
        path.chmod(PRIVATE_FILE)


def write_private(path: str | Path, text: str) -> None:
    """Write `text` to a file created 600 (no moment where another user could open it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    private_file(path)  # an existing file keeps its mode through O_CREAT


def secure_state(home: str | Path) -> None:
    """The state folder 700, and its request, registry, audit, salt and recipe files 600."""
    home = private_dir(home)
    for name in ("requests.db", "mlflow.db", "salt", "recipe.json"):
        private_file(home / name)
    audit = home / "audit"
    if audit.is_dir():
        for record in audit.glob("*.json"):
            private_file(record)
