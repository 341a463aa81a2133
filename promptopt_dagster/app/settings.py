"""Every knob in one place, read from PROMPTOPT_* environment variables and `.env`.

Nothing here needs a cloud account: the defaults run the whole loop offline on the embedded model,
with state kept under `.promptopt/` in the project so `dagster dev` and the CLI see the same runs.
"""

from __future__ import annotations

import difflib
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from promptopt_dagster.core.errors import PromptOptError
from promptopt_dagster.core.storage import mirror
from promptopt_dagster.llm.model_settings import ModelSettings
from promptopt_dagster.llm.store_location import check_url

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PROMPTOPT_", env_file=".env", extra="ignore", env_nested_delimiter="__"
    )

    data_dir: Path = Field(PROJECT_ROOT / "data", description="Holds manifest.yaml and the CSV splits.")
    prompts_dir: Path = Field(PROJECT_ROOT / "prompts", description="Initial prompt per dataset.")
    state_dir: Path = Field(PROJECT_ROOT / ".promptopt", description="Warehouse, LLM cache and the Dagster home.")
    model_dir: Path = Field(
        Path.home() / ".cache" / "promptopt" / "models",
        description="Where the packaged GGUF is assembled once and reused.",
    )
    llm_threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        description="Threads llama.cpp uses (local backend).",
        json_schema_extra={"default_text": "the number of CPU cores"},
    )
    task: ModelSettings = Field(
        default_factory=ModelSettings, description="The model that answers rows: PROMPTOPT_TASK__BACKEND, __MODEL, ..."
    )
    optimizer: ModelSettings = Field(
        default_factory=ModelSettings,
        description="The model the optimizers that need one ask (reflective, gepa, metaprompt, vertex): "
        "PROMPTOPT_OPTIMIZER__*",
    )
    judge: ModelSettings = Field(
        default_factory=ModelSettings, description="The model the llm_judge scorer asks: PROMPTOPT_JUDGE__*"
    )
    progress_interval_s: float = Field(5.0, description="Seconds between progress lines during inference.")
    max_concurrent_runs: int = Field(
        3, ge=1, description="Runs the Dagster daemon executes at once (run queue limit in the generated dagster.yaml)."
    )
    dagster_url: str = Field(
        "http://127.0.0.1:3000", description="The Dagster webserver `promptopt submit`, `status` and `cancel` talk to."
    )
    deployment: Literal["local", "gcs", "cluster"] = Field(
        "local",
        description="local: tables in DuckDB, artifacts and promoted prompts on disk; gcs: tables in DuckDB, "
        "artifacts and promoted prompts in gs://GCS_BUCKET/GCS_PREFIX; cluster (runs on machines that share no "
        "disk): tables, optimization state, response cache and Dagster's instance in the Postgres database "
        "WAREHOUSE_URL, artifacts and promoted prompts in gs://GCS_BUCKET/GCS_PREFIX",
    )
    gcs_bucket: str | None = Field(None, description="gcs and cluster deployments: the bucket (it must exist)")
    gcs_prefix: str = Field("promptopt", description="gcs and cluster deployments: the folder inside the bucket")
    gcs_project: str | None = Field(
        None, description="gcs and cluster deployments: the project billed (default: ADC's)"
    )
    warehouse_url: str | None = Field(
        None,
        description="cluster deployment: the Postgres database, postgresql://USER@HOST:PORT/DATABASE (no password "
        "in it: set PGPASSWORD)",
    )
    cache_url: str | None = Field(
        None,
        description="Postgres database of the response cache and usage ledger, postgresql://USER@HOST:PORT/DATABASE "
        "(no password in it: set PGPASSWORD). Unset: WAREHOUSE_URL in the cluster deployment, else "
        "llm_cache.sqlite in the state dir",
    )

    @field_validator("cache_url", "warehouse_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        return check_url(value) if value else None

    @model_validator(mode="after")
    def _deployment_needs(self):
        """What each deployment needs, said when the settings are read rather than in the middle of a run."""
        if self.deployment == "cluster" and not self.warehouse_url:
            raise ValueError("PROMPTOPT_DEPLOYMENT=cluster needs PROMPTOPT_WAREHOUSE_URL (a Postgres database)")
        if self.deployment in ("gcs", "cluster") and not self.gcs_bucket:
            raise ValueError(f"PROMPTOPT_DEPLOYMENT={self.deployment} needs PROMPTOPT_GCS_BUCKET (an existing bucket)")
        return self

    @field_validator("data_dir", "prompts_dir", mode="before")
    @classmethod
    def _mirror_gs(cls, value):
        """A gs:// data or prompts directory is read through a local mirror made at start-up."""
        text = str(value)
        if not text.startswith("gs://"):
            return value
        state = Path(os.environ.get("PROMPTOPT_STATE_DIR") or PROJECT_ROOT / ".promptopt")
        return mirror(text, state / "gcs_mirror" / text[len("gs://") :].rstrip("/"))

    @field_validator("data_dir", "prompts_dir", "state_dir", "model_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        """Relative to the folder the command starts in, made absolute once: `promptopt ui` hands these to
        processes that run elsewhere (the code server runs in the repository), and Dagster needs an absolute
        DAGSTER_HOME."""
        return value.expanduser().resolve()

    def artifacts_root(self) -> str:
        """Where artifact assets are written as readable JSON (and promoted prompts served)."""
        if self.deployment in ("gcs", "cluster"):
            return f"gs://{self.gcs_bucket}/{self.gcs_prefix.strip('/')}"
        return str(self.state_dir / "artifacts")

    @property
    def warehouse_path(self) -> Path:
        """The DuckDB file of the local and gcs deployments."""
        return self.state_dir / "warehouse.duckdb"

    @property
    def warehouse(self) -> str:
        """Where the tables and the optimization state live: the cluster's Postgres URL, else the DuckDB file."""
        return self.warehouse_url if self.deployment == "cluster" else str(self.warehouse_path)

    @property
    def llm_cache_path(self) -> Path:
        """The response cache's file on one machine (also where `cache_url` is unset)."""
        return self.state_dir / "llm_cache.sqlite"

    @property
    def llm_cache(self) -> Path | str:
        """Where the response cache and the usage ledger live: `cache_url`; else the cluster's database; else the
        file in the state dir."""
        return self.cache_url or (self.warehouse_url if self.deployment == "cluster" else None) or self.llm_cache_path

    @property
    def dagster_home(self) -> Path:
        return self.state_dir / "dagster_home"

    @property
    def manifest_path(self) -> Path:
        return self.data_dir / "manifest.yaml"

    @property
    def optimizations_path(self) -> Path:
        """Named optimizations of the manifest's datasets; every dataset also has a default one."""
        return self.data_dir / "optimizations.yaml"


class SettingsError(PromptOptError):
    """A PROMPTOPT_* variable (environment or .env) that is not a setting, or has a value it cannot take."""


def _known_names() -> list[str]:
    """Every PROMPTOPT_* name a setting answers to; a model's knobs are nested (PROMPTOPT_TASK__MODEL)."""
    names = []
    for name, field in Settings.model_fields.items():
        names.append(f"PROMPTOPT_{name.upper()}")
        if field.annotation is ModelSettings:
            names += [f"PROMPTOPT_{name.upper()}__{knob.upper()}" for knob in ModelSettings.model_fields]
    return names


def dotenv_settings(path: Path = Path(".env")) -> dict[str, str]:
    """The PROMPTOPT_* lines of a `.env` file, names upper-cased as the settings read them ({} without a file).
    Other variables are not ours: they are neither checked nor passed on."""
    if not path.is_file():
        return {}
    return {
        key.upper(): value
        for key, value in dotenv_values(path).items()
        if key.upper().startswith("PROMPTOPT_") and value is not None
    }


def check_dotenv(path: Path = Path(".env")) -> None:
    """Refuse a PROMPTOPT_* line of `.env` that names no setting: pydantic-settings would ignore it, and a
    typo (PROMPTOPT_STAT_DIR) would silently run with the default."""
    known = _known_names()
    for key in dotenv_settings(path):
        if key not in known:
            close = difflib.get_close_matches(key.upper(), known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise SettingsError(
                f"{path}: {key} is not a promptopt setting{hint} Fix the name or remove the line "
                "(docs/reference/settings.md lists every setting)."
            )


#: settings whose refused value is not repeated in the error: it may hold a secret (a password in a URL)
NOT_ECHOED = frozenset({"cache_url", "warehouse_url"})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    dotenv = Path(".env").resolve()
    check_dotenv(dotenv)
    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"]:  # a rule across settings (`_deployment_needs`): its message names the variables
            from_file = "PROMPTOPT_DEPLOYMENT" not in os.environ and "PROMPTOPT_DEPLOYMENT" in dotenv_settings(dotenv)
            where = str(dotenv) if from_file else "environment"
            raise SettingsError(f"{where}: {err['msg'].removeprefix('Value error, ')}.") from None
        name = "PROMPTOPT_" + "__".join(str(part).upper() for part in err["loc"])
        where = (
            f"environment variable {name}"
            if name in os.environ or name not in dotenv_settings(dotenv)
            else f"{dotenv}: {name}"
        )
        got = "" if err["loc"][0] in NOT_ECHOED else f" (got {err.get('input')!r})"
        raise SettingsError(f"{where}: {err['msg'].removeprefix('Value error, ')}{got}.") from None
