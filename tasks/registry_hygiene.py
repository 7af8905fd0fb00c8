"""Model versions trained on data a request erased: tagged, and by policy made unloadable.

Erasing the forget set's bytes leaves the models that learned from them. Once a request's
forget set is erased and its outcome is settled, the versions that still carry what it removed
are marked `trained_on_erased_data=<request ids>`:

- the parent, the champion the request started from, trained on the erased samples;
- the request's rejected candidates made by a method that starts from the parent (not the
  `retrain` fallback, which trains from scratch on the retain set only).

With `UIB_ERASED_VERSIONS=delete-artifacts` their model files are deleted as well (the version,
its tags, description and run records stay, so the history still reads; loading it fails), and
they are tagged `model_artifacts_deleted`. The champion's are never deleted: a held, rejected or
withdrawn request leaves the parent serving, tagged but loadable.
"""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from pydantic import BaseModel, Field

from tasks.registry import champion, client_for, find_versions
from tasks.settings import Settings
from tasks.unlearning import FORGET_FREE

ERASED_DATA_TAG = "trained_on_erased_data"
ARTIFACTS_DELETED_TAG = "model_artifacts_deleted"


class ErasedLineage(BaseModel):
    """What `mark_erased_lineage` did for a request."""

    tagged: list[str] = Field(default_factory=list, description="versions tagged, oldest first")
    artifacts_deleted: list[str] = Field(default_factory=list)


def derived_from_erased(version: ModelVersion) -> bool:
    """A rejected candidate (a reviewer's approval removes the tag) that started from the
    parent, so it read or kept the erased data."""
    return "rejected" in version.tags and version.tags.get("method") not in FORGET_FREE


def with_request(tag_value: str | None, request_id: str) -> str:
    """The tag's comma-separated request ids with `request_id` added once."""
    ids = [i for i in (tag_value or "").split(",") if i]
    return ",".join(ids if request_id in ids else [*ids, request_id])


def mark_erased_lineage(settings: Settings, request_id: str, parent: str | None) -> ErasedLineage:
    """Tag `parent` and the request's rejected candidates derived from it; delete their model
    files when the policy says so (never the champion's). Running it again changes nothing."""
    client = client_for(settings)
    marked = [v for v in find_versions(client, settings, request_id=request_id)]
    marked = [v for v in marked if derived_from_erased(v)]
    if parent is not None:
        marked.append(client.get_model_version(settings.model_name, parent))
    current = champion(client, settings)
    serving = str(current.version) if current else None
    done = ErasedLineage()
    for version in sorted(marked, key=lambda v: int(v.version)):
        number = str(version.version)
        value = with_request(version.tags.get(ERASED_DATA_TAG), request_id)
        if value != version.tags.get(ERASED_DATA_TAG):
            client.set_model_version_tag(settings.model_name, number, ERASED_DATA_TAG, value)
        done.tagged.append(number)
        deleting = settings.erased_versions == "delete-artifacts" and number != serving
        if deleting and delete_model_files(client, settings, version):
            done.artifacts_deleted.append(number)
    return done


def delete_model_files(client: MlflowClient, settings: Settings, version: ModelVersion) -> bool:
    """Delete the version's model files from the artifact store; False when already gone."""
    if version.tags.get(ARTIFACTS_DELETED_TAG) == "true":
        return False
    uri = client.get_model_version_download_uri(settings.model_name, str(version.version))
    get_artifact_repository(uri).delete_artifacts()
    client.set_model_version_tag(
        settings.model_name, str(version.version), ARTIFACTS_DELETED_TAG, "true"
    )
    return True
