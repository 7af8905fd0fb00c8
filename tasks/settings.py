"""The pipeline's configuration: one state folder, its stores, the method and the gates.

Everything has an embedded default under the state folder (`.uib/` in the working directory,
`UIB_HOME` overrides); `MLFLOW_TRACKING_URI` and `UIB_DVC_REMOTE` point at grown-up stores.
Nested fields read `UIB_<FIELD>__<SUBFIELD>`, e.g. `UIB_GATES__BIAS_ASR_CEILING=0.05`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.private_state import private_dir, write_private
from tasks.validation import ShiftPolicy
from uib.scenarios import ScenarioConfig


class GateConfig(BaseModel):
    """EVALUATION.md's gates; every threshold is configuration."""

    model_config = ConfigDict(extra="forbid")

    max_ta_drop_pp: float = Field(1.0, description="TA ≥ TA_original − this (pp)")
    max_ra_drop_pp: float = Field(1.0, description="RA ≥ RA_original − this (pp)")
    forget_acc_margin_pp: float = Field(2.0, description="forget accuracy ≤ TA + this (pp)")
    mia_fraction: float = Field(
        0.5, description="MIA-Efficacy ≥ this × the retain-calibrated level"
    )
    bias_asr_ceiling: float = Field(0.1, description="bias_asr ≤ this, for patch-bias requests")
    confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1.0,
        description="confidence of every gate's interval; a forget-set gate fails only when its "
        "one-sided bound at this level is on the wrong side of the threshold, and the loss test "
        "fails when its p-value is under 1 − this",
    )
    max_redirect_share: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="no_redirect: the largest share of forgotten samples predicted as one class "
        "other than their label and their nearest retained rows' label stays ≤ this (fails "
        "when its lower bound exceeds it)",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UIB_", env_nested_delimiter="__", extra="forbid")

    home: Path = Field(Path(".uib"), description="the state folder")
    dvc_remote: str | None = Field(None, description="DVC remote URL; default <home>/dvc-remote")
    model_name: str = "uib-classifier"
    champion_alias: str = "champion"
    experiment: str = "uib-unlearning"
    dataset: str = "digits"
    data_dir: str | None = None
    scenario: ScenarioConfig = Field(default_factory=ScenarioConfig)
    train_epochs: int | None = Field(None, ge=1, description="override the recipe's epochs")
    method: str = "uib"
    method_config: dict = Field(default_factory=dict)
    device: str = "auto"
    gates: GateConfig = Field(default_factory=GateConfig)
    on_gate_failure: Literal["retrain", "hold"] = Field(
        "retrain",
        description="a candidate that fails a gate is registered `rejected`; then "
        "`retrain`: the exact fallback (the `retrain` method on the retain set, its own GPU task "
        "run, the same gates) and the request is approved if it passes, held if not; `hold`: the "
        "request is held for review (`uib request approve|reject|retry|withdraw`)",
    )
    shift: ShiftPolicy = Field(default_factory=ShiftPolicy)
    erased_versions: Literal["tag", "delete-artifacts"] = Field(
        "tag",
        description="model versions trained on data a request erased (the parent of its "
        "approved candidate, its rejected candidates that started from the parent) get the tag "
        "`trained_on_erased_data=<request_id>`; `delete-artifacts`: their model files are "
        "deleted too, so they can no longer be loaded (never the champion's)",
    )
    audit_salt: SecretStr | None = Field(
        None, description="default: a random salt kept in <home>/salt"
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint (MinIO, moto) for an s3:// DVC remote and the "
        "inbox; MLflow's S3 artifacts read MLFLOW_S3_ENDPOINT_URL",
    )
    inbox_url: str | None = Field(
        None, description="s3://bucket/prefix/ where deletion requests arrive as JSON objects"
    )
    gpu_deployment: str | None = Field(
        None,
        description="`unlearn-step/<name>`: run the unlearning step as that deployment "
        "(a GPU work pool sharing <home>); default: in the flow's process",
    )
    retry_backoff_s: float = Field(
        2.0,
        ge=0,
        le=600,
        description="the network steps' first retry comes this long after a transient fault, "
        "each next one twice as long (`tasks.retrying`, which reads it when the pipeline loads)",
    )
    schedule_cron: str = Field("0 2 * * *", description="when `unlearn-scheduled` runs")
    schedule_timezone: str = "UTC"

    @field_validator("home")
    @classmethod
    def _absolute(cls, home: Path) -> Path:
        """Resolved once, so flows handed these settings use the same folder from any cwd."""
        return home.expanduser().resolve()

    @model_validator(mode="after")
    def _known_method(self) -> Settings:
        """An unknown method or config key fails here, naming it, before any run starts."""
        from uib import methods

        config_cls = methods.get(self.method).config_cls
        try:
            config_cls.model_validate(self.method_config)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
            )
            raise ValueError(f"method_config for {self.method!r}: {problems}") from None
        return self

    def overrides(self) -> dict:
        """The explicitly set fields as JSON, to hand to a flow run as its `settings` parameter.

        Secrets stay out: flow parameters are stored and shown by the Prefect server, and the
        process running the flow reads them from its own environment.
        """
        return self.model_dump(mode="json", exclude_unset=True, exclude={"audit_salt"})

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def data_repo(self) -> Path:
        return self.home / "data-repo"

    @property
    def remote_url(self) -> str:
        return self.dvc_remote or str(self.home / "dvc-remote")

    @property
    def recipe_path(self) -> Path:
        """The retrain recipe `uib adopt` keeps; absent for the built-in data sets."""
        return self.home / "recipe.json"

    @property
    def ledger_path(self) -> Path:
        return self.home / "requests.db"

    @property
    def audit_dir(self) -> Path:
        return self.home / "audit"

    @property
    def results_dir(self) -> Path:
        """Prefect's persisted task results (the unlearned candidates), a folder per request."""
        return self.home / "results"

    def stage_dir(self, request_id: str) -> Path:
        return self.home / "stage" / request_id

    def salt(self) -> str:
        """The audit salt: configured, or made once and kept private in the state folder."""
        if self.audit_salt:
            return self.audit_salt.get_secret_value()
        path = self.home / "salt"
        if not path.exists():
            private_dir(path.parent)
            write_private(path, secrets.token_hex(32))
        return path.read_text().strip()
