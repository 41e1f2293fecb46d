"""Service configuration: one Settings object, read from SCORING_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the scoring service can be told; each field is SCORING_<NAME> in the env."""

    model_config = SettingsConfigDict(
        env_prefix="SCORING_",
        extra="ignore",
        use_attribute_docstrings=True,
        protected_namespaces=(),
    )

    feature_repo: Path = Path("feature_repo")
    """Feast feature repository (holds the registry the service validates models against)."""

    feature_store_yaml: Path | None = None
    """feature_store.yaml to use; default is the repository's own (embedded SQLite).
    Point it at feature_repo/feature_store.redis.yaml for Redis."""

    model_root: Path = Path("models/packages")
    """Root folder of model packages (<root>/<name>/<version>/manifest.json)."""

    model_name: str = "fraud_model"
    """Name of the model to serve."""

    model_version: str = "v1"
    """Version of the model to serve."""

    host: str = "127.0.0.1"
    """Interface to listen on."""

    port: int = Field(default=8000, ge=1, le=65535)
    """TCP port to listen on."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Logging level."""

    max_batch_size: int = Field(default=10_000, ge=1, le=10_000)
    """Most transactions accepted by one score-batch call."""

    intra_op_threads: int = Field(default=1, ge=1, le=64)
    """ONNX Runtime intra-op threads per session (1 is best for small batches)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to predict: auto (CUDA when usable and the package has a GPU graph), cpu, cuda."""
