"""The one typed configuration shared by the library, the CLI and the Airflow DAG params."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from custseg.errors import InputError

DEFAULT_FEATURES: tuple[str, ...] = ("Annual Income (k$)", "Spending Score (1-100)")
SCALERS: tuple[str, ...] = ("minmax", "standard", "robust", "none")
SELECTIONS: tuple[str, ...] = ("auto", "elbow")
DEFAULT_K_MIN = 1
DEFAULT_K_MAX = 50
DEFAULT_SEED = 42
DEFAULT_N_INIT = 10


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """Options of one segmentation run.

    `features` are matched against the table's columns case- and punctuation-insensitively;
    `k_min..k_max` is inclusive; `select` names the rule that picks k from the sweep.
    """

    features: tuple[str, ...] = DEFAULT_FEATURES
    k_min: int = DEFAULT_K_MIN
    k_max: int = DEFAULT_K_MAX
    scaler: str = "minmax"
    select: str = "auto"
    seed: int = DEFAULT_SEED
    n_init: int = DEFAULT_N_INIT
    sample_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        self.validate()

    def validate(self) -> None:
        """Raise `InputError` naming the offending option and value."""
        if not self.features:
            raise InputError("features is empty: name at least one numeric column")
        if len(set(self.features)) != len(self.features):
            raise InputError(f"features lists a column twice: {list(self.features)}")
        for name, value in (("k_min", self.k_min), ("k_max", self.k_max)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{name}={value!r} is not a whole number")
        if self.k_min < 1:
            raise InputError(f"k_min={self.k_min} < 1: K-Means needs at least one cluster")
        if self.k_min > self.k_max:
            raise InputError(
                f"k_min={self.k_min} > k_max={self.k_max}: swap them or widen the range"
            )
        if self.scaler not in SCALERS:
            raise InputError(f"unknown scaler {self.scaler!r}: use one of {', '.join(SCALERS)}")
        if self.select not in SELECTIONS:
            raise InputError(
                f"unknown selection method {self.select!r}: use one of {', '.join(SELECTIONS)}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"seed={self.seed!r} must be a whole number >= 0")
        if self.n_init < 1:
            raise InputError(f"n_init={self.n_init} < 1")
        if self.sample_size is not None and self.sample_size < 100:
            raise InputError(f"sample_size={self.sample_size} < 100 is too small to choose k")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists, not tuples) that `from_dict` reads back."""
        data = dataclasses.asdict(self)
        data["features"] = list(self.features)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        """Build from a dict such as DAG params, ignoring keys that are not options."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names and v is not None}
        if "features" in kwargs:
            feats = kwargs["features"]
            if isinstance(feats, str):
                feats = [f.strip() for f in feats.split(",") if f.strip()]
            kwargs["features"] = tuple(feats)
        return cls(**kwargs)
