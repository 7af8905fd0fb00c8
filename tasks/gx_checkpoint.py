"""Great Expectations (GX Core 1.x) plumbing: frames in, one checkpoint run, `Check`s out.

`run_checkpoint` builds an ephemeral context (nothing written to disk but a temporary folder
of pickles), one pandas data source, and a validation definition per frame with its suite;
`checks_from` reads the result back as one `Check` per expectation, named by the `check` of
the expectation's `meta`, and `result_json` keeps the whole result for the audit.

GX is imported inside the functions: importing it takes seconds, which every command that
merely imports `tasks.validation` would otherwise pay.
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel


class Check(BaseModel):
    """One expectation's verdict: `observed` is GX's observed value, or the count and the
    first few ids of the failing rows."""

    name: str
    success: bool
    observed: Any = None
    threshold: Any = None


def described(check: str, threshold: Any = None) -> dict:
    """An expectation's `meta`: the name its `Check` gets, and the bound shown beside it."""
    return {"check": check, "threshold": threshold}


def gx_frame(frame: pd.DataFrame, index: str | None) -> pd.DataFrame:
    """A copy GX can type-check: zoned dates in UTC without the zone, every other pandas
    extension dtype (pandas 3's `str`, a category, `Int64`, `boolean`) as Python objects,
    `index` as the index.

    GX 1.x compares a column's dtype with the numpy dtypes its type names give, which no
    extension dtype is; given an object column it checks the Python type of every value
    instead. The index is what GX reports as the position of a failing row, so it is set to
    the id.
    """
    out = frame.copy()
    for col in out.columns:
        dtype = out[col].dtype
        if isinstance(dtype, pd.DatetimeTZDtype):
            out[col] = out[col].dt.tz_convert("UTC").dt.tz_localize(None)
        elif isinstance(dtype, pd.api.extensions.ExtensionDtype):
            out[col] = out[col].astype(object)
    if index is not None:
        out.index = pd.Index(out[index].astype(object), name=None)
    return out


def run_checkpoint(frames: dict[str, pd.DataFrame], suites: dict[str, list], name: str):
    """Run one GX checkpoint with a validation definition per frame; return its result."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    source = context.data_sources.add_pandas(name)
    definitions = []
    with tempfile.TemporaryDirectory(prefix="uib-gx-") as tmp:
        for frame_name, frame in frames.items():
            path = Path(tmp) / f"{frame_name}.pkl"
            with path.open("wb") as f:
                pickle.dump(frame, f, protocol=pickle.HIGHEST_PROTOCOL)
            batch = source.add_pickle_asset(frame_name, filepath_or_buffer=path)
            suite = context.suites.add(gx.ExpectationSuite(name=f"{frame_name}_suite"))
            for expectation in suites[frame_name]:
                suite.add_expectation(expectation)
            definitions.append(
                context.validation_definitions.add(
                    gx.ValidationDefinition(
                        name=frame_name,
                        data=batch.add_batch_definition_whole_dataframe("whole"),
                        suite=suite,
                    )
                )
            )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=name,
                validation_definitions=definitions,
                actions=[],
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": 10},
            )
        )
        return checkpoint.run()


def _row_key(index: Any) -> Any:
    """The id of a failing row as GX reports it (`{"sample_id": "x"}` -> `"x"`)."""
    if isinstance(index, dict):
        for key in ("sample_id", "label", "key"):
            if key in index:
                return index[key]
    return index


def checks_from(result) -> list[Check]:
    """One `Check` per expectation of every validation definition, in the checkpoint's order."""
    from great_expectations.util import convert_to_json_serializable

    checks = []
    for run in result.run_results.values():
        for r in run.results:
            meta = r.expectation_config.meta or {}
            res = r.result or {}
            if r.exception_info.get("raised_exception") or any(
                isinstance(v, dict) and v.get("raised_exception") for v in r.exception_info.values()
            ):
                observed: Any = "could not be evaluated (column missing or wrong type)"
            elif "observed_value" in res:
                observed = res["observed_value"]
            else:
                observed = {
                    "unexpected": res.get("unexpected_count", 0),
                    "examples": [
                        _row_key(i) for i in res.get("partial_unexpected_index_list", [])[:5]
                    ],
                }
            checks.append(
                Check(
                    name=meta.get("check", r.expectation_config.type),
                    success=bool(r.success),
                    observed=convert_to_json_serializable(observed),
                    threshold=meta.get("threshold"),
                )
            )
    return checks


def result_json(result) -> dict:
    """The checkpoint result as JSON: what the audit keeps beside the report."""
    return {
        "name": result.name,
        "success": bool(result.success),
        "run_id": result.run_id.to_json_dict(),
        "validation_results": [run.to_json_dict() for run in result.run_results.values()],
    }
