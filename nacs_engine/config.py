"""The typed configuration of one selection: budget, method and options.

Every option has a default and a documented range. The ranges are written once,
here, as ``annotated_types`` constraints; the engine checks them in
``SelectionConfig.__post_init__`` and the job contract (``worker.spec``) turns the
same fields into its request schema, so the HTTP API and the engine can never
disagree. This module imports no torch: the API process reads it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

from annotated_types import Ge, Gt, Le, Lt

METHODS: tuple[str, ...] = (
    "nacs",
    "nacs-no-denoise",
    "nacs-no-relabel",
    "nacs-paper",
    "denoised-random",
    "random",
    "stratified",
    "balanced",
)
BASELINE_METHODS: tuple[str, ...] = ("random", "stratified", "balanced")
# What the other methods are compared against: the random baselines, and the teacher's
# filter and soft labels on a random draw (what the selection itself adds).
REFERENCE_METHODS: tuple[str, ...] = (*BASELINE_METHODS, "denoised-random")
# Methods that run the cross-fitted teacher (``nacs_engine.nacs``).
TEACHER_METHODS: tuple[str, ...] = ("nacs", "nacs-no-denoise", "nacs-no-relabel", "denoised-random")
BACKBONES: tuple[str, ...] = ("deepfm", "dcnv2")
CLASS_BALANCES: tuple[str, ...] = ("auto", "stratified", "balanced", "none")

Method = Literal[
    "nacs",
    "nacs-no-denoise",
    "nacs-no-relabel",
    "nacs-paper",
    "denoised-random",
    "random",
    "stratified",
    "balanced",
]
Backbone = Literal["deepfm", "dcnv2"]
ClassBalance = Literal["auto", "stratified", "balanced", "none"]
SoftLabelSource = Literal["selection", "final"]
SOFT_LABEL_SOURCES: tuple[str, ...] = ("selection", "final")
Selection = Literal["coverage", "facility-location", "random"]
SELECTIONS: tuple[str, ...] = ("coverage", "facility-location", "random")
Embedding = Literal["gradient", "normalized-gradient", "scalar", "features"]
EMBEDDINGS: tuple[str, ...] = ("gradient", "normalized-gradient", "scalar", "features")
Weighting = Literal["uniform", "craig"]
WEIGHTINGS: tuple[str, ...] = ("uniform", "craig")
Guard = Literal["report", "fallback"]
GUARDS: tuple[str, ...] = ("report", "fallback")

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

# Fields that form the budget and the method; every other field is an "option".
BUDGET_AND_METHOD_FIELDS: frozenset[str] = frozenset({"ratio", "size", "method"})


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class SelectionConfig:
    """What to select and how. Exactly one of ``ratio`` and ``size`` is set."""

    ratio: Annotated[float, Gt(0.0), Lt(1.0)] | None = field(
        default=None, metadata=_doc("Budget as a fraction of the rows, in (0, 1).")
    )
    size: Annotated[int, Ge(1)] | None = field(
        default=None, metadata=_doc("Budget as a number of rows, at least 1.")
    )
    method: Method = field(
        default="nacs",
        metadata=_doc(
            "nacs; its ablations nacs-no-denoise (nothing set aside) and nacs-no-relabel "
            "(the given labels); nacs-paper (the paper's rounds of gradient matching with "
            "MC-dropout denoising); denoised-random (the teacher's filter and soft labels on "
            "a stratified random draw); or a baseline: random (uniform), stratified (keeps "
            "the click rate), balanced (50/50 with weights that restore the click rate)."
        ),
    )
    backbone: Backbone = field(
        default="deepfm", metadata=_doc("Proxy CTR model used for selection: deepfm or dcnv2.")
    )
    rounds: Annotated[int, Ge(1), Le(20)] = field(
        default=3, metadata=_doc("Selection rounds (N_choose) of nacs-paper, 1-20.")
    )
    remove_rate: Annotated[float, Ge(0.0), Le(0.5)] = field(
        default=0.1,
        metadata=_doc(
            "Share of over-selected rows removed by MC-dropout denoising (nacs-paper), 0-0.5."
        ),
    )
    mc_passes: Annotated[int, Ge(2), Le(100)] = field(
        default=10,
        metadata=_doc("Monte Carlo dropout passes for denoising (N_denoise) of nacs-paper, 2-100."),
    )
    class_balance: ClassBalance = field(
        default="auto",
        metadata=_doc(
            "Class mix of the coreset: auto is balanced where clicks are rare (under 8% of "
            "the given labels, with a trusted teacher), else stratified; stratified keeps "
            "the data's click rate (with the default coverage, in the soft labels: rows are "
            "drawn across the teacher's probability strata, so the given labels may hold "
            "fewer clicks), balanced takes 50/50 and re-weights to the data's rate, none "
            "lets the selection decide."
        ),
    )
    seed: Annotated[int, Ge(0), Le(2**63 - 1)] = field(
        default=0, metadata=_doc("Seed of every random generator; same seed, same rows.")
    )
    device: str = field(
        default="auto", metadata=_doc("auto (CUDA when present), cpu, cuda or cuda:N.")
    )
    partition_size: Annotated[int, Ge(64), Le(100_000)] | None = field(
        default=None,
        metadata=_doc(
            "Rows per facility-location partition, 64-100000; by default 512 million / the "
            "rows, within 512-4096 (512 rows from 1M rows on)."
        ),
    )
    epochs_per_round: Annotated[int, Ge(1), Le(20)] = field(
        default=3,
        metadata=_doc("Training epochs over the coreset after each round of nacs-paper, 1-20."),
    )
    learning_rate: Annotated[float, Gt(0.0), Le(1.0)] = field(
        default=0.01, metadata=_doc("Adam learning rate of the proxy model, in (0, 1].")
    )
    weight_decay: Annotated[float, Ge(0.0), Le(1.0)] = field(
        default=0.0, metadata=_doc("Adam weight decay of the proxy model, 0-1.")
    )
    batch_size: Annotated[int, Ge(16), Le(262_144)] | None = field(
        default=None,
        metadata=_doc("Training batch size, 16-262144; by default 8192, less for small data."),
    )
    embed_dim: Annotated[int, Ge(2), Le(128)] = field(
        default=10, metadata=_doc("Embedding dimension of the proxy model, 2-128.")
    )
    dropout: Annotated[float, Ge(0.0), Lt(1.0)] = field(
        default=0.5, metadata=_doc("Dropout of the proxy model's MLP, in [0, 1).")
    )
    eps: Annotated[float, Gt(0.0), Lt(1.0)] = field(
        default=1e-3, metadata=_doc("Stochastic-greedy accuracy epsilon, in (0, 1).")
    )
    min_count: Annotated[int, Ge(1), Le(1_000_000)] = field(
        default=10,
        metadata=_doc(
            "Feature values seen fewer times than this map to the field's out-of-vocabulary id, "
            "1-1000000."
        ),
    )
    warmup_ratio: Annotated[float, Ge(0.0), Le(0.5)] = field(
        default=0.2,
        metadata=_doc(
            "Share of the rows the proxy model trains on (one epoch) before the first round "
            "of nacs-paper, 0-0.5."
        ),
    )

    random_share: Annotated[float, Ge(0.0), Le(0.9)] = field(
        default=0.0,
        metadata=_doc(
            "Share of each round's picks drawn uniformly at random from its candidates (per class) "
            "instead of by facility location (nacs-paper), 0-0.9."
        ),
    )
    soft_labels: SoftLabelSource = field(
        default="selection",
        metadata=_doc(
            "Whose predictions correct the labels in nacs-paper: selection (the proxy's "
            "prediction for a row when the row was selected, before the proxy trained on it) "
            "or final (the final proxy, which has trained on every coreset row)."
        ),
    )

    teacher_folds: Annotated[int, Ge(2), Le(10)] | None = field(
        default=None,
        metadata=_doc(
            "Folds of the cross-fitted teacher, 2-10: each row is scored by a proxy model "
            "trained on the other folds; by default 1 + 1 million / the rows, within 2-5 "
            "(5 folds up to 250,000 rows, 2 from 1M rows on)."
        ),
    )
    teacher_epochs: Annotated[int, Ge(1), Le(20)] | None = field(
        default=None,
        metadata=_doc(
            "Most epochs each fold's model of the teacher trains (early stopping may end it "
            "sooner), 1-20; by default 500,000 / its training rows, within 1-20 (1 above 250,000 "
            "training rows). More epochs help where the folds take few steps (large batches on "
            "mid-size data), at their cost in time."
        ),
    )
    duplicate_prior: Annotated[float, Ge(0.0), Le(100_000.0)] | None = field(
        default=None,
        metadata=_doc(
            "Where candidates have the same encoded values (numbers in the same bucket), the "
            "click probability that the noise estimate, the set-aside and the soft labels read "
            "becomes the click rate of a row's duplicates in the teacher's other folds, with "
            "the teacher's probability counted as this many rows, 0-100,000 (0: the teacher's "
            "alone; the coverage strata stay the teacher's). By default 30 where half the "
            "candidates or more are in groups of 100 or more, whose own rate is sharper than a "
            "teacher cut short (data of few fields), else 0."
        ),
    )
    selection: Selection = field(
        default="coverage",
        metadata=_doc(
            "How the kept rows are chosen: coverage (evenly across ten strata of the teacher's "
            "click probability), facility-location (within each class, on the embedding option) "
            "or random (within each class)."
        ),
    )
    embedding: Embedding = field(
        default="gradient",
        metadata=_doc(
            "What facility location compares: gradient (the head's last-layer gradient "
            "vector), normalized-gradient, scalar (the residual p - y) or features (the "
            "penultimate layer)."
        ),
    )
    weighting: Weighting = field(
        default="uniform",
        metadata=_doc(
            "Row weights: uniform, or craig (facility location's cluster sizes, tempered to "
            "keep min_effective_share)."
        ),
    )
    min_effective_share: Annotated[float, Ge(0.0), Le(1.0)] = field(
        default=0.5,
        metadata=_doc(
            "With craig weights, the least effective sample size (sum w)^2 / sum w^2 as a "
            "share of the rows, 0-1."
        ),
    )
    set_aside_factor: Annotated[float, Ge(0.0), Le(10.0)] = field(
        default=3.0,
        metadata=_doc(
            "Rows set aside as likely wrong labels, as a multiple of the count of wrong labels "
            "in each class that the estimated flip rate less two standard errors implies, 0-10 "
            "(0 sets none aside); where duplicates are pooled (duplicate_prior), within a group "
            "of 100 or more identical rows, at most the wrong labels it likely holds."
        ),
    )
    label_mix: Annotated[float, Ge(0.0), Le(1.0)] | None = field(
        default=None,
        metadata=_doc(
            "Weight of the given label in the soft label, 0-1: soft = mix * label + (1 - mix) "
            "* the teacher's calibrated click probability; by default 0.3 where the coreset is "
            "balanced (class_balance balanced, or auto with under 8% given clicks and a trusted "
            "teacher), else 0.1."
        ),
    )
    flip_correction: bool = field(
        default=True,
        metadata=_doc(
            "Soft labels from the teacher's click probability q corrected for flipped labels: "
            "(q - rho) / (1 - 2 rho) within 0-1, rho the estimated flip rate less two standard "
            "errors (false: q as it is)."
        ),
    )
    keep_click_rate: bool = field(
        default=True,
        metadata=_doc(
            "Soft labels shifted on the logit scale until their weighted mean is the teacher's "
            "over the coreset (about the data's click rate): the set-aside and the flip "
            "correction reshape the labels without moving the click rate a model learns from "
            "them (false: the mean moves with them)."
        ),
    )
    min_teacher_auc: Annotated[float, Ge(0.0), Le(1.0)] = field(
        default=0.5,
        metadata=_doc(
            "The teacher's out-of-fold AUC on the given labels below which its predictions are "
            "not trusted (nacs, denoised-random): nothing is set aside or relabelled and the rows "
            "are drawn at random within each class. The AUC must also be two standard errors of "
            "a chance AUC above 0.5, which is all the default asks (0.567 on 300 rows, half "
            "clicks; 0.506 on 50,000 rows, a fifth clicks); 0 trusts it always, 0-1."
        ),
    )
    audit: bool = field(
        default=True,
        metadata=_doc(
            "Hold back validation rows and compare the coreset with a stratified random "
            "subset of the same size (the manifest's audit)."
        ),
    )
    audit_seeds: Annotated[int, Ge(1), Le(10)] = field(
        default=2, metadata=_doc("Seeds of the audit's paired comparison, 1-10.")
    )
    guard: Guard = field(
        default="report",
        metadata=_doc(
            "What the audit does: report (writes its verdict) or fallback (delivers the best "
            "on validation of the coreset, the random subset and their mixture when the "
            "coreset loses beyond two standard errors)."
        ),
    )
    shard_rows: Annotated[int, Ge(1000), Le(100_000_000)] | None = field(
        default=None,
        metadata=_doc(
            "Rows per shard when the workers share one job of a teacher method (nacs and its "
            "ablations, denoised-random), 1,000-100,000,000; by default 1,048,576. Data of one "
            "shard or less runs as one job; the coreset is the same either way."
        ),
    )

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.size is None):
            raise ValueError("ratio, size: give exactly one budget, a ratio in (0, 1) or a size")
        for name, hint in _constrained_fields().items():
            _check_constraints(name, getattr(self, name), hint)
        if not _DEVICE_PATTERN.match(self.device):
            raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")

    @property
    def denoise(self) -> bool:
        """Whether likely wrong labels are removed: rows set aside by the teacher, or
        nacs-paper's MC-dropout step (off for nacs-no-denoise and the random baselines)."""
        if self.method == "nacs-paper":
            return self.remove_rate > 0
        return self.method in ("nacs", "nacs-no-relabel", "denoised-random") and (
            self.set_aside_factor > 0
        )

    @property
    def relabel(self) -> bool:
        """Whether the coreset gets soft labels (off for nacs-no-relabel and baselines)."""
        return self.method in ("nacs", "nacs-no-denoise", "nacs-paper", "denoised-random")

    @property
    def uses_teacher(self) -> bool:
        """Whether the method runs the cross-fitted teacher (``nacs_engine.nacs``)."""
        return self.method in TEACHER_METHODS

    @property
    def is_baseline(self) -> bool:
        return self.method in BASELINE_METHODS

    def budget(self, n_rows: int) -> int:
        """The number of rows to return for a dataset of ``n_rows`` rows.

        Raises ValueError naming the budget field when the budget cannot be met.
        """
        if n_rows <= 0:
            raise ValueError("data: the dataset has no rows")
        if self.size is not None:
            if self.size > n_rows:
                raise ValueError(
                    f"size: the budget of {self.size} rows is larger than the dataset "
                    f"({n_rows} rows)"
                )
            return self.size
        assert self.ratio is not None
        k = int(round(self.ratio * n_rows))
        if k < 1:
            raise ValueError(
                f"ratio: {self.ratio} of {n_rows} rows selects no row; use a larger ratio or a size"
            )
        return k

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SelectionConfig:
        """Build from a mapping; unknown keys are a ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: unknown option(s)")
        return cls(**values)


def option_fields() -> list[dataclasses.Field[Any]]:
    """The tunable options (every field but the budget and the method)."""
    return [
        f for f in dataclasses.fields(SelectionConfig) if f.name not in BUDGET_AND_METHOD_FIELDS
    ]


def _constrained_fields() -> dict[str, Any]:
    return get_type_hints(SelectionConfig, include_extras=True)


def _check_constraints(name: str, value: Any, hint: Any) -> None:
    """Check ``value`` against the Literal choices and annotated_types bounds in ``hint``."""
    if value is None:
        if type(None) in get_args(hint):
            return
        raise ValueError(f"{name}: a value is required")
    for part in _union_members(hint):
        if part is type(None):
            continue
        base, constraints = part, ()
        if get_origin(part) is Annotated:
            base, *constraints = get_args(part)
        if get_origin(base) is Literal:
            if value not in get_args(base):
                choices = ", ".join(map(str, get_args(base)))
                raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
            return
        if base is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        if base is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name}: expected a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
        if base is bool and not isinstance(value, bool):
            raise ValueError(f"{name}: expected true or false, got {value!r}")
        if base is str and not isinstance(value, str):
            raise ValueError(f"{name}: expected a string, got {value!r}")
        for constraint in constraints:
            _check_bound(name, value, constraint)
        return


def _union_members(hint: Any) -> tuple[Any, ...]:
    args = get_args(hint)
    if get_origin(hint) is Annotated or not args:
        return (hint,)
    if get_origin(hint) is Literal:
        return (hint,)
    return args


def _check_bound(name: str, value: Any, constraint: Any) -> None:
    if isinstance(constraint, Gt) and not value > constraint.gt:
        raise ValueError(f"{name}: must be greater than {constraint.gt}, got {value!r}")
    if isinstance(constraint, Ge) and not value >= constraint.ge:
        raise ValueError(f"{name}: must be at least {constraint.ge}, got {value!r}")
    if isinstance(constraint, Lt) and not value < constraint.lt:
        raise ValueError(f"{name}: must be less than {constraint.lt}, got {value!r}")
    if isinstance(constraint, Le) and not value <= constraint.le:
        raise ValueError(f"{name}: must be at most {constraint.le}, got {value!r}")
