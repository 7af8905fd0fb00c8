"""Every data source in one registry: `read_source("folder:/data/cats")` → `SourceData`.

Built in: `digits`, `mnist`, `idx:<dir>` (`uib.sources.builtin`), `folder:<dir>` (images in the
ImageFolder layout, `uib.sources.folder`) and `arrays:<file>` (one .npz or Parquet file,
`uib.sources.arrays`). A new kind registers a reader with `@source(...)`.
"""

# Importing registers the sources, in the order `available()` lists them: built-ins first.
from uib.sources import builtin  # noqa: F401, I001
from uib.sources import folder  # noqa: F401
from uib.sources import arrays  # noqa: F401
from uib.sources.registry import REGISTRY, DataSource, available, read_source, source

__all__ = ["REGISTRY", "DataSource", "available", "read_source", "source"]
