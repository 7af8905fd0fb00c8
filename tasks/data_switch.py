"""Writing a new data version beside the old one, and switching to it atomically.

A new version is never written into the checked-out `data/`. It is built in `.data.next/`
(shards that keep every sample are hard links of the old files, the rewritten ones new files),
then switched in by two renames (`data/` → `.data.prev/`, `.data.next/` → `data/`), added to
DVC, pushed and committed. The git commit is the one atomic step that makes the version
current; until it lands, the old version is intact in `.data.prev/` and HEAD still names it.

A journal (`.dvc/tmp/uib-switch.json`, written before anything moves) records HEAD as it was.
`repair` reads it at the start of every write and of every request's run: if HEAD moved, the
switch completed and only the leftovers go; if not, the old version is put back (`data/`,
`data.dvc`, `.gitignore`) and the request's rerun versions it again, once. A work tree that
differs from its commit without a journal (a crash of an older build, a hand edit) is restored
from the commit and the DVC cache. Nobody has to run `dvc checkout --force` by hand.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from tasks.data_plumbing import DATA_DIR, StorageError, dvc_repo, git
from tasks.faults import fault_point
from tasks.host_faults import RemoteNotWritable, not_writable

if TYPE_CHECKING:
    from tasks.data_plumbing import DataVersion
    from tasks.data_repo import DataRepo

NEXT_DIR, PREVIOUS_DIR = ".data.next", ".data.prev"
JOURNAL = Path(".dvc") / "tmp" / "uib-switch.json"
logger = logging.getLogger(__name__)


class SwitchJournal(BaseModel):
    """What a switch in progress started from: enough to finish or undo it after a crash."""

    head_before: str
    had_data: bool
    request_id: str | None
    started_at: datetime
    pid: int


def journal_path(root: Path) -> Path:
    return root / JOURNAL


def read_journal(root: Path) -> SwitchJournal | None:
    path = journal_path(root)
    if not path.exists():
        return None
    try:
        return SwitchJournal.model_validate_json(path.read_text())
    except ValueError:  # cut short while written: nothing had moved yet
        return None


def _write_journal(root: Path, journal: SwitchJournal) -> None:
    path = journal_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as handle:
        handle.write(journal.model_dump_json())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _exclude_from_git(root: Path) -> None:
    """Keep the switch's folders out of `git status` (this clone's exclude file, not a commit)."""
    exclude = root / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    listed = exclude.read_text().splitlines() if exclude.exists() else []
    missing = [f"/{name}" for name in (NEXT_DIR, PREVIOUS_DIR) if f"/{name}" not in listed]
    if missing:
        with exclude.open("a") as handle:
            handle.write("".join(f"{line}\n" for line in missing))


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link an unchanged file into the next tree (files are only ever replaced, never
    rewritten in place, so the link can never change the old version); copy across devices."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def publish(
    repo: DataRepo,
    build: Callable[[Path], None],
    message: str,
    n_train: int,
    n_test: int,
    request_id: str | None,
) -> DataVersion:
    """Build the next tree with `build(folder)`, switch it in and commit it; undo on failure.

    Call with the repository's writer lock held, after `repair`. A failure (an exception, or a signal turned
    into one) puts the old version back before it propagates; a kill leaves the journal, and
    the next `repair` does the same.
    """
    root = repo.root
    _exclude_from_git(root)
    had_data = repo.has_data()
    journal = SwitchJournal(
        head_before=repo.rev_parse("HEAD"),
        had_data=had_data,
        request_id=request_id,
        started_at=datetime.now(UTC),
        pid=os.getpid(),
    )
    _write_journal(root, journal)
    try:
        shutil.rmtree(root / NEXT_DIR, ignore_errors=True)
        (root / NEXT_DIR).mkdir()
        build(root / NEXT_DIR)
        fault_point("versioning-written")
        if (root / DATA_DIR).exists():
            os.rename(root / DATA_DIR, root / PREVIOUS_DIR)
        os.rename(root / NEXT_DIR, root / DATA_DIR)
        fault_point("versioning-switched")
        version = repo.commit_workspace(message, n_train, n_test, request_id)
    except BaseException:
        try:
            _undo(repo, journal)
        except Exception as undo_error:  # e.g. git has no room for its index on a full disk
            logger.warning(  # the journal stays: the next run's `repair` undoes it
                "data repository %s: the switch could not be undone yet (%s)", root, undo_error
            )
        raise
    fault_point("versioning-committed")
    _finish(root)
    return version


def _finish(root: Path) -> None:
    shutil.rmtree(root / PREVIOUS_DIR, ignore_errors=True)
    shutil.rmtree(root / NEXT_DIR, ignore_errors=True)
    journal_path(root).unlink(missing_ok=True)


def _undo(repo: DataRepo, journal: SwitchJournal) -> None:
    """Put the version `journal` started from back: HEAD, `data.dvc`, `.gitignore`, `data/`.

    The new tree goes first, so that on a full disk the space it took is free before git
    writes its index (git's reset used to fail there, leaving the switch to the next run)."""
    root = repo.root
    shutil.rmtree(root / NEXT_DIR, ignore_errors=True)
    previous = root / PREVIOUS_DIR
    if previous.exists():
        shutil.rmtree(root / DATA_DIR, ignore_errors=True)
        os.rename(previous, root / DATA_DIR)
    elif not journal.had_data:
        shutil.rmtree(root / DATA_DIR, ignore_errors=True)
    (root / ".git" / "index.lock").unlink(missing_ok=True)  # a git command killed mid-way
    git(root, "reset", "-q", "--hard", journal.head_before)
    _finish(root)


def repair(repo: DataRepo) -> str | None:
    """Finish or undo a switch a crash cut short, or restore a work tree that differs from its
    commit; what was done, or None when everything was in order. Call with the writer lock."""
    root = repo.root
    journal = read_journal(root)
    if journal is not None:
        if repo.rev_parse("HEAD") != journal.head_before:
            _finish(root)
            what = f"completed the switch to {repo.rev_parse('HEAD')[:10]} a crash cut short"
        else:
            _undo(repo, journal)
            what = (
                f"undid an uncommitted switch (request {journal.request_id or '-'}, process "
                f"{journal.pid}, {journal.started_at:%Y-%m-%d %H:%M:%S}Z): data/ is "
                f"{journal.head_before[:10]} again"
            )
        logger.warning("data repository %s: %s", root, what)
        return what
    leftovers = [p for p in (root / NEXT_DIR, root / PREVIOUS_DIR) if p.exists()]
    for path in leftovers:  # a crash before the journal was written, or after it was removed
        shutil.rmtree(path, ignore_errors=True)
    if not repo.has_data():
        return None
    changed = workspace_changes(repo)
    if not changed:
        return "removed leftovers of a switch" if leftovers else None
    (root / ".git" / "index.lock").unlink(missing_ok=True)
    git(root, "reset", "-q", "--hard", "HEAD")
    with dvc_repo(root) as dvc:
        dvc.checkout(force=True)
    what = f"restored data/ to the last commit; it differed ({changed})"
    logger.warning("data repository %s: %s", root, what)
    return what


def workspace_changes(repo: DataRepo) -> dict:
    """How `data/` and `data.dvc` differ from the last commit (empty: they do not)."""
    tracked = git(repo.root, "status", "--porcelain", "--", "data.dvc", ".gitignore").strip()
    if tracked:
        return {"git": tracked}
    with dvc_repo(repo.root) as dvc:
        return dvc.status(targets=[str(repo.root / "data.dvc")])


def push_objects(root: Path) -> None:
    """`dvc push`; a failure is a StorageError, and nothing is committed.

    A remote this user may not write is `RemoteNotWritable` instead, naming the remote: another
    try cannot help (it used to be a StorageError, retried three times over ~14 s)."""
    url = "(unknown)"
    try:
        with dvc_repo(root) as repo:
            url = repo.config["remote"][repo.config["core"]["remote"]]["url"]
            repo.push()
    except Exception as exc:
        denied = not_writable(exc)
        where = getattr(denied, "filename", None)
        local = "://" not in url
        if denied is not None and (not local or Path(str(where or url)).is_relative_to(url)):
            who = f"by user {getpass.getuser()}" if local else "with these credentials"
            raise RemoteNotWritable(
                f"the DVC remote {url} is not writable {who} ({denied}); nothing committed: "
                "make it writable and send the request again"
            ) from exc
        raise StorageError(f"dvc push to the remote failed, nothing committed: {exc}") from exc
