"""The registry of data sources: a dataset name `kind` or `kind:ARG` picks one by its kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from uib.dataset import SourceData
from uib.samples import DataError

Reader = Callable[[str, Path | None], SourceData]  # (ARG, data_dir) -> what the source read


@dataclass(frozen=True)
class DataSource:
    """One kind of data: `read(arg, data_dir)` for the dataset name `kind:arg`, or `kind` alone
    when `argument` (what the argument is, e.g. "a directory") is None."""

    kind: str
    read: Reader
    usage: str
    summary: str
    argument: str | None


REGISTRY: dict[str, DataSource] = {}


def source(
    kind: str, usage: str, summary: str, argument: str | None = None
) -> Callable[[Reader], Reader]:
    """Register the decorated reader as the source `kind`."""

    def register(read: Reader) -> Reader:
        REGISTRY[kind] = DataSource(kind, read, usage, summary, argument)
        return read

    return register


def available() -> list[str]:
    """How to name each source, e.g. `digits`, `folder:<dir>`."""
    return [s.usage for s in REGISTRY.values()]


def read_source(name: str, data_dir: Path | None) -> SourceData:
    """What the source that `name` names reads; unknown kinds and missing or unexpected
    arguments are `DataError`s that list the known sources."""
    kind, _, arg = name.partition(":")
    if kind not in REGISTRY:
        raise DataError(f"dataset: unknown {name!r}; known: {', '.join(available())}")
    entry = REGISTRY[kind]
    if entry.argument and not arg:
        raise DataError(f"dataset: '{kind}:' needs {entry.argument}, e.g. '{entry.usage}'")
    if not entry.argument and arg:
        raise DataError(f"dataset: {kind!r} takes no argument, got {name!r}")
    return entry.read(arg, data_dir)
