"""Every pipeline option, declared once; the CLI flags, the DAG Params and validation come from it.

An option is a dataclass field whose metadata holds its `Spec` (help, bounds or choices,
trigger-form section). `PipelineConfig` holds what shapes the model, `RunRequest` what a run
reads and where it writes. `add_cli_options` builds argparse flags, `dag_params` the keyword
arguments of Airflow `Param`s, and `parse_request` validates a mapping of values (a trigger
conf or parsed flags) against the same declaration, naming the closest valid key for an
unknown one. Checks that depend on the data (k_max against the distinct points) stay with
the data, in the core.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from custseg.errors import InputError

CLI, DAG = "cli", "dag"
BOTH = (CLI, DAG)


@dataclass(frozen=True, kw_only=True)
class Spec:
    """How one option is shown and checked: `kind` is `int`, `float`, `bool`, `str`, `path`
    or `names`."""

    kind: str
    title: str
    help: str
    section: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    required: bool = False
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    runners: tuple[str, ...] = BOTH
    default_text: str | None = None
    applies_with: str | None = None
    """Another option this one only makes sense with (giving it alone is an error)."""


def option(default: Any, **spec: Any) -> Any:
    """A dataclass field carrying its `Spec` (see the module docstring)."""
    return field(default=default, metadata={"spec": Spec(**spec)})


def order_log_option(title: str, flag: str, metavar: str, help: str, found: str) -> Any:
    """An option of `--transactions` alone: how to read the order log."""
    return option(
        None, kind="str", nullable=True, title=f"Order log: {title}", section="Data",
        flags=(flag,), metavar=metavar, default_text=found, applies_with="transactions_path",
        help=f"with --transactions: {help}",
    )  # fmt: skip


DEFAULT_FEATURES: tuple[str, ...] = ("Annual Income (k$)", "Spending Score (1-100)")
SCALERS: tuple[str, ...] = ("minmax", "standard", "robust", "none")
SELECTIONS: tuple[str, ...] = ("auto", "elbow")
TRANSFORMS: tuple[str, ...] = ("auto", "none", "log1p")
CATEGORY_WEIGHT = 0.15
"""Default weight of a categorical feature, chosen on bench/mixed.py (README, "Categorical
columns")."""
TRANSACTION_FEATURES: tuple[str, ...] = ("recency_days", "frequency", "monetary_mean")
"""What a run on an order log clusters on unless --features says otherwise."""
K_LIMIT = 200
"""The largest k a sweep may try: beyond it the sweep and the report stop being useful."""


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """Options that shape the model: which columns, which ks, how scaled, how k is chosen."""

    features: tuple[str, ...] = option(
        DEFAULT_FEATURES, kind="names", title="Features", section="Data", metavar="NAME",
        default_text="Annual Income (k$), Spending Score (1-100); with --transactions: "
        "recency_days, frequency, monetary_mean",
        help="columns to cluster on, matched case- and punctuation-insensitively",
    )  # fmt: skip
    categorical: tuple[str, ...] | None = option(
        None, kind="names", nullable=True, title="Categorical features", section="Data",
        metavar="NAME", default_text="text features with at most 20 distinct values",
        help="features to treat as categories, one-hot encoded inside the model (e.g. a "
        "numeric region code); text features with few values are categorical anyway",
    )  # fmt: skip
    category_weight: float = option(
        CATEGORY_WEIGHT, kind="float", minimum=0.0, maximum=4.0, title="Category weight",
        section="Model", metavar="W",
        help="weight of each categorical feature's one-hot block: two customers differing in "
        "one category are sqrt(2) x W apart, a MinMax-scaled number spans 1",
    )  # fmt: skip
    k_min: int = option(
        1, kind="int", minimum=1, maximum=K_LIMIT, title="Smallest k", section="Model",
        help="first number of segments in the sweep",
    )  # fmt: skip
    k_max: int = option(
        50, kind="int", minimum=1, maximum=K_LIMIT, title="Largest k", section="Model",
        help="last number of segments in the sweep (>= k_min; clamped to the number of "
        "distinct customers)",
    )  # fmt: skip
    scaler: str = option(
        "minmax", kind="str", choices=SCALERS, title="Scaler", section="Model",
        help="feature scaling inside the saved model",
    )  # fmt: skip
    transform: str = option(
        "auto", kind="str", choices=TRANSFORMS, title="Transform", section="Model",
        help="transform of the features inside the saved model, before scaling: log1p "
        "(log(1 + x), for skewed counts and amounts; needs values >= 0), none, or auto "
        "(log1p for features built from --transactions, none for a customer table)",
    )  # fmt: skip
    select: str = option(
        "auto", kind="str", choices=SELECTIONS, title="Choice of k", section="Model",
        help="how k is chosen: auto (silhouette, Calinski-Harabasz, Davies-Bouldin, gap and "
        "BIC vote, checked on resamples) or elbow (the knee of the SSE curve, kneed)",
    )  # fmt: skip
    seed: int = option(
        42, kind="int", minimum=0, maximum=2**32 - 1, title="Random seed", section="Model",
        help="same data and seed give the same model",
    )  # fmt: skip
    n_init: int = option(
        10, kind="int", minimum=1, maximum=100, title="Initialisations per k",
        section="Model", help="K-Means (k-means++) initialisations per k",
    )  # fmt: skip
    sample_size: int | None = option(
        None, kind="int", minimum=100, nullable=True, title="Sweep sample rows",
        section="Model", metavar="ROWS",
        default_text="automatic: max(5000, 100 x k_max per feature pair)",
        help="rows the k sweep and the selection criteria use; the final model always "
        "uses every row",
    )  # fmt: skip

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        check_values(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists, not tuples) that `from_dict` reads back."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineConfig:
        """Read back what `to_dict` wrote."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    """What one run reads and where it writes, with its `PipelineConfig`."""

    input_path: str = option(
        "", kind="path", nullable=True, title="Customer table", section="Data",
        flags=("--input", "--input-path"), metavar="PATH",
        help="customer table: CSV (plain, .gz, .bz2, .xz, .zst or a one-file .zip) or "
        "Parquet (give it or --transactions)",
    )  # fmt: skip
    transactions_path: str | None = option(
        None, kind="path", nullable=True, title="Order log", section="Data",
        flags=("--transactions", "--transactions-path"), metavar="PATH",
        help="an order log (one row per order, CSV or Parquet) instead of a customer table: "
        "recency, frequency and monetary value are built per customer (custseg features) "
        "and segmented in the same run",
    )  # fmt: skip
    customer_column: str | None = order_log_option(
        "customer column", "--customer", "COL", "the customer id column",
        "found by name (customer id)",
    )  # fmt: skip
    date_column: str | None = order_log_option(
        "date column", "--date", "COL", "the order date column", "found by name (date)"
    )
    amount_column: str | None = order_log_option(
        "amount column", "--amount", "COL", "the order value column",
        "found by name (amount, value, revenue, sales, price, total)",
    )  # fmt: skip
    as_of: str | None = order_log_option(
        "as of", "--as-of", "YYYY-MM-DD", "the day recency and tenure are counted to",
        "the day after the last order",
    )  # fmt: skip
    test_path: str | None = option(
        None, kind="path", nullable=True, title="New customers to score", section="Data",
        flags=("--test", "--test-path"), metavar="PATH",
        help="new customers to assign to segments after training (same columns)",
    )  # fmt: skip
    names_path: str | None = option(
        None, kind="path", nullable=True, title="Segment names", section="Data",
        flags=("--names",), metavar="FILE",
        help="YAML or JSON mapping segment ids to your names ({0: Bargain hunters, ...}); "
        "without it a run keeps the names of the run it aligns to, by segment id",
    )  # fmt: skip
    artifacts_root: str = option(
        "artifacts", kind="path", title="Artifacts root", section="Output",
        flags=("--out", "--artifacts-root"), metavar="OUT",
        help="runs go to OUT/runs/<run_id>/; OUT/latest.json names the promoted run",
    )  # fmt: skip
    sweep_batches: int = option(
        1, kind="int", minimum=1, maximum=50, title="Sweep batches", section="Execution",
        runners=(DAG,),
        help="number of mapped tasks the k sweep is split into (spread over workers)",
    )  # fmt: skip
    force_promote: bool = option(
        False, kind="bool", title="Promote even if the gate fails", section="Promotion",
        help="replace latest.json even when the promotion gate fails (recorded in "
        "metrics.json as forced)",
    )  # fmt: skip
    min_segment_share: float = option(
        0.02, kind="float", minimum=0.0, maximum=0.5, title="Gate: smallest segment share",
        section="Promotion", metavar="SHARE",
        help="promotion gate: every segment must hold at least this share of the customers",
    )  # fmt: skip
    min_stability: float = option(
        0.6, kind="float", minimum=0.0, maximum=1.0, title="Gate: least stability",
        section="Promotion", metavar="SHARE",
        help="promotion gate: at least this share of the resamples must choose the same k "
        "(measured by --select auto only)",
    )  # fmt: skip
    reason: str | None = option(
        None, kind="str", nullable=True, title="Why this run", section="Promotion",
        metavar="TEXT",
        help="why this run was started, recorded in metrics.json (score_customers sets it "
        "when it retrains on drift)",
    )  # fmt: skip
    config: PipelineConfig = field(default_factory=PipelineConfig)

    def __post_init__(self) -> None:
        check_values(self)

    @property
    def model_transform(self) -> str:
        """The transform the model applies: `transform`, with auto resolved by the input."""
        if self.config.transform != "auto":
            return self.config.transform
        return "log1p" if self.transactions_path else "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for logs and XCom."""
        out = {name: _jsonable(getattr(self, name)) for name, _ in _specs(type(self))}
        return {**out, "config": self.config.to_dict()}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _specs(cls: type) -> Iterator[tuple[str, Spec]]:
    for f in dataclasses.fields(cls):
        if "spec" in f.metadata:
            yield f.name, f.metadata["spec"]


def all_options(runner: str | None = None) -> dict[str, tuple[Spec, Any]]:
    """Every option by name (optionally only those `runner` offers), with its default."""
    out: dict[str, tuple[Spec, Any]] = {}
    for cls in (RunRequest, PipelineConfig):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, spec in _specs(cls):
            if runner is None or runner in spec.runners:
                out[name] = (spec, defaults[name])
    return out


def check_value(name: str, spec: Spec, value: Any) -> Any:
    """`value` checked against `spec` (and lightly normalised); an `InputError` names both."""
    if value is None:
        if spec.nullable:
            return None
        raise InputError(f"{name} is missing: {spec.help}")
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{name}={value!r} is not a whole number")
        if spec.minimum is not None and value < spec.minimum:
            raise InputError(f"{name}={value} must be >= {spec.minimum}")
        if spec.maximum is not None and value > spec.maximum:
            raise InputError(f"{name}={value} must be <= {spec.maximum}")
        return value
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise InputError(f"{name}={value!r} must be true or false")
        return value
    if spec.kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise InputError(f"{name}={value!r} is not a number")
        if spec.minimum is not None and value < spec.minimum:
            raise InputError(f"{name}={value} must be >= {spec.minimum}")
        if spec.maximum is not None and value > spec.maximum:
            raise InputError(f"{name}={value} must be <= {spec.maximum}")
        return float(value)
    if spec.kind == "names":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise InputError(f"{name}={value!r} must be a list of column names")
        value = tuple(v.strip() for v in value if v.strip())
        if not value:
            raise InputError(f"{name} is empty: name at least one numeric column")
        if len(set(value)) != len(value):
            raise InputError(f"{name} lists a column twice: {list(value)}")
        return value
    if not isinstance(value, str):
        raise InputError(f"{name}={value!r} must be a string")
    if spec.choices is not None and value not in spec.choices:
        raise InputError(f"{name}={value!r} is not one of {', '.join(spec.choices)}")
    if spec.kind == "path" and not value.strip() and (spec.required or not spec.nullable):
        raise InputError(f"{name} is empty: {spec.help}")
    return value


def check_values(obj: Any) -> None:
    """Check every declared option of a `PipelineConfig` or `RunRequest`, then the rules
    between options."""
    for name, spec in _specs(type(obj)):
        value = check_value(name, spec, getattr(obj, name))
        object.__setattr__(obj, name, value)
    if isinstance(obj, PipelineConfig) and obj.k_min > obj.k_max:
        raise InputError(f"k_min={obj.k_min} > k_max={obj.k_max}: lower k_min or raise k_max")
    if isinstance(obj, RunRequest) and not (obj.input_path or obj.transactions_path):
        raise InputError("no input: pass --input (a customer table) or --transactions "
                         "(an order log)")  # fmt: skip


def closest_name(name: str, names: list[str]) -> str | None:
    """The valid name `name` most likely meant (`kmax` -> `k_max`), if any is close."""
    plain = {n.replace("_", "").lower(): n for n in names}
    key = str(name).replace("_", "").replace("-", "").lower()
    if key in plain:
        return plain[key]
    close = difflib.get_close_matches(key, list(plain), n=1, cutoff=0.6)
    return plain[close[0]] if close else None


def check_known(values: Mapping[str, Any], *, runner: str) -> None:
    """Refuse a key that is not an option of `runner`, naming the closest valid one."""
    known = list(all_options(runner))
    for key in values:
        if key not in known:
            near = closest_name(key, known)
            hint = f"did you mean {near}?" if near else f"valid keys: {', '.join(known)}"
            raise InputError(f"unknown option {key!r}: {hint}")


def parse_request(values: Mapping[str, Any], *, runner: str) -> RunRequest:
    """A validated `RunRequest` from option values (missing keys take their defaults)."""
    check_known(values, runner=runner)
    given = {k: v for k, v in values.items() if not (v is None and k != "test_path")}
    config_names = {f.name for f in dataclasses.fields(PipelineConfig)}
    config = PipelineConfig(**{k: v for k, v in given.items() if k in config_names})
    request = {k: v for k, v in given.items() if k not in config_names}
    for name in ("test_path", "transactions_path"):
        if request.get(name) == "":
            request[name] = None
    if request.get("input_path") and request.get("transactions_path"):
        raise InputError(f"both --input={request['input_path']!r} and --transactions="
                         f"{request['transactions_path']!r}: give one of them")  # fmt: skip
    for name, (spec, _) in all_options().items():
        if spec.applies_with and request.get(name) and not request.get(spec.applies_with):
            needed = cli_flags(spec.applies_with, all_options()[spec.applies_with][0])[0]
            raise InputError(f"{cli_flags(name, spec)[0]} {request[name]!r} applies only with "
                             f"{needed}")  # fmt: skip
    return RunRequest(config=config, **request)


# -- generated interfaces ----------------------------------------------------------------


def cli_flags(name: str, spec: Spec) -> tuple[str, ...]:
    """The option's CLI flags: its declared ones, else `--name-with-dashes`."""
    return spec.flags or ("--" + name.replace("_", "-"),)


def add_cli_options(parser: Any) -> None:
    """Add one argparse flag per option the CLI offers, grouped by section."""
    groups: dict[str, Any] = {}
    for name, (spec, default) in all_options(CLI).items():
        group = groups.get(spec.section) or parser.add_argument_group(spec.section.lower())
        groups[spec.section] = group
        shown = spec.default_text or (", ".join(default) if isinstance(default, tuple) else default)
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": None,
            "metavar": spec.metavar,
            "help": spec.help + ("" if spec.required or shown is None else f" (default: {shown})"),
        }
        if spec.kind == "int":
            kwargs["type"] = int
        if spec.kind == "float":
            kwargs["type"] = float
        if spec.kind == "bool":
            kwargs = {"dest": name, "default": None, "action": "store_const", "const": True,
                      "help": spec.help}  # fmt: skip
        if spec.choices:
            kwargs["choices"] = spec.choices
            kwargs["metavar"] = "{" + ",".join(spec.choices) + "}"
        if spec.kind == "names":
            kwargs["nargs"] = "+"
        if spec.required:
            kwargs["required"] = True
        group.add_argument(*cli_flags(name, spec), **kwargs)


def in_dag_terms(message: str) -> str:
    """`message` with each CLI flag of an option the DAG offers written as its param name
    (`pass --input` -> `pass input_path`), for errors shown in Airflow."""
    import re

    names = {flag: name for name, (spec, _) in all_options(DAG).items()
             for flag in cli_flags(name, spec)}  # fmt: skip
    return re.sub(r"--[a-z][a-z-]*", lambda m: names.get(m.group(), m.group()), message)


def cli_values(args: Any) -> dict[str, Any]:
    """The option values given on a command line (flags left out are not returned)."""
    return {
        name: getattr(args, name)
        for name in all_options(CLI)
        if getattr(args, name, None) is not None
    }


def dag_params(defaults: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Keyword arguments of one Airflow `Param` per option the DAG offers (JSON schema,
    title, description, section); `defaults` overrides declared defaults (e.g. paths)."""
    out: dict[str, dict[str, Any]] = {}
    for name, (spec, default) in all_options(DAG).items():
        default = (defaults or {}).get(name, default)
        schema: dict[str, Any] = {
            "int": {"type": "integer"},
            "float": {"type": "number"},
            "bool": {"type": "boolean"},
            "str": {"type": "string"},
            "path": {"type": "string", "minLength": 1},
            "names": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        }[spec.kind]
        if spec.nullable:
            schema["type"] = ["null", schema["type"]]
            schema.pop("minLength", None)
        if spec.minimum is not None:
            schema["minimum"] = spec.minimum
        if spec.maximum is not None:
            schema["maximum"] = spec.maximum
        if spec.choices:
            schema["enum"] = list(spec.choices)
        help_text = spec.help[0].upper() + spec.help[1:] + "."
        if spec.default_text:
            help_text += f" Empty: {spec.default_text}."
        out[name] = {
            "default": list(default) if isinstance(default, tuple) else default,
            "title": spec.title,
            "description": help_text,
            "section": spec.section,
            **schema,
        }
    return out


__all__ = [
    "DEFAULT_FEATURES",
    "K_LIMIT",
    "SCALERS",
    "SELECTIONS",
    "TRANSACTION_FEATURES",
    "TRANSFORMS",
    "PipelineConfig",
    "RunRequest",
    "Spec",
    "add_cli_options",
    "all_options",
    "check_known",
    "cli_values",
    "dag_params",
    "in_dag_terms",
    "parse_request",
]
