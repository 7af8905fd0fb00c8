"""A hostile host for the real CLI: another user than the state folder's stores, a small disk.

Root ignores file modes, so a DVC remote is read-only only to another user: when the tests run
as root (CI does), the CLI runs as `nobody` through `runuser`, as `stores.py` runs PostgreSQL.
The venv's interpreter may live where `nobody` cannot reach it (pyenv under `/root`, mode 700):
the command then runs in a mount namespace of its own (`unshare --mount`), where a tmpfs of
mode 711 lies over the folder that blocks the way and the interpreter's prefix is bound back
inside it. Nothing of that is seen outside the one command, and it goes away with it; the
interpreter, the venv and the code are the ones the tests run.

A small disk is a tmpfs mounted for one test (root only; the test is skipped, saying why,
where mounting is not permitted), filled by a ballast file beside the state folder.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

UIB = str(Path(sys.executable).parent / "uib")
# reading a data repository that another user owns, as root, without writing into it: git
# refuses such a repository unless told it is safe, and `git status` refreshes the index
GIT_READ_ONLY = {
    "GIT_CONFIG_COUNT": "1",
    "GIT_CONFIG_KEY_0": "safe.directory",
    "GIT_CONFIG_VALUE_0": "*",
    "GIT_OPTIONAL_LOCKS": "0",
}
_AS_USER = """set -e
user=$1 prefix=$2 blocked=$3 stash=$4
shift 4
if [ -n "$blocked" ]; then
  mount --bind "$prefix" "$stash"
  mount -t tmpfs -o mode=711,size=1m uib-hostile "$blocked"
  mkdir -p "$prefix"
  mount --bind "$stash" "$prefix"
fi
exec runuser -u "$user" -- env -i "$@"
"""


def runner() -> str:
    """Who runs the CLI: `nobody` under root (for whom modes hold), else the user running the
    tests."""
    return "nobody" if os.geteuid() == 0 else getpass.getuser()


def chown_tree(path: Path, user: str) -> None:
    """`chown -R user:<their group> path`."""
    entry = pwd.getpwnam(user)
    for folder, dirs, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.chown(name, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def blocked_ancestor(path: Path, user: str) -> Path | None:
    """The highest folder above `path` that `user` may not pass through, or None."""
    uid = pwd.getpwnam(user).pw_uid
    for folder in reversed(path.parents):
        info = folder.stat()
        if not info.st_mode & 0o001 and info.st_uid != uid:
            return folder
    return None


def run_as(
    user: str, argv: list[str], env: dict[str, str], stash: Path
) -> subprocess.CompletedProcess:
    """Run `argv` as `user` with exactly `env`. `stash` is an empty folder of the test's: a
    mount point inside the command's own namespace when the interpreter is out of `user`'s
    reach."""
    if user == getpass.getuser():
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=300, cwd=stash.parent
        )
    prefix = Path(sys.base_prefix).resolve()
    blocked = blocked_ancestor(prefix, user)
    assignments = [f"{k}={v}" for k, v in env.items()]
    if blocked is None:
        command = ["runuser", "-u", user, "--", "env", "-i", *assignments, *argv]
    else:
        namespace = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _AS_USER]
        command = [*namespace, "sh", user, str(prefix), str(blocked), str(stash)]
        command += [*assignments, *argv]
    return subprocess.run(
        command,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},  # unshare, mount, runuser; then `env -i`
        capture_output=True,
        text=True,
        timeout=300,
        cwd=stash.parent,
    )


def skip_unless_runner_can_run_the_cli(env: dict[str, str], stash: Path) -> None:
    """Skip, saying why, where the CLI cannot be started as `runner()` at all (no `runuser`,
    or no mount namespace where the interpreter is out of its reach)."""
    probe = run_as(runner(), [sys.executable, "-c", "import flows.cli"], env, stash)
    if probe.returncode != 0:
        pytest.skip(f"the CLI cannot run as {runner()} here: {probe.stderr.strip()[-500:]}")


def uib(
    args: list[str], env: dict[str, str], stash: Path, as_runner: bool = True
) -> tuple[int, str, str]:
    """Run `uib args` with exactly `env`, as `runner()` (else as this process's user): (exit
    code, stdout, stderr)."""
    user = runner() if as_runner else getpass.getuser()
    done = run_as(user, [UIB, *args], env, stash)
    return done.returncode, done.stdout, done.stderr


@contextmanager
def small_disk(path: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of `size_mib` MiB mounted at `path` (mode 711) for the block; skip the test,
    saying why, where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=711", "uib-hostile", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"a small disk needs `mount -t tmpfs` (root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)  # busy: detach it


def fill(disk: Path, leave_kib: int) -> Path:
    """A ballast file on `disk` that leaves `leave_kib` KiB free; its path."""
    ballast = disk / "ballast"
    free = shutil.disk_usage(disk).free
    with ballast.open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, max(free - leave_kib * 1024, 0))
    return ballast


def tree_digests(folder: Path) -> dict[str, str]:
    """`{relative path: sha256}` of every file under `folder`: what a data version holds."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
