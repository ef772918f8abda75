"""What each stage reports: typed, frozen summaries.

Each stage returns its summary and writes it as its report (``reports/<stage>.json``, a DVC
metric). The commit message, the round report, ``alloop status``, MLflow and the demo read
these classes, not dicts: a misspelt field is an error, never a silent 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

S = TypeVar("S", bound="Summary")


@dataclass(frozen=True)
class Summary:
    #: the stage that writes this summary, and the artifact it is saved as
    stage: ClassVar[str]
    report: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
        """The summary from its JSON form. Fields this alloop does not know (a report written
        by another version) are left out; a missing field without a default is an error."""
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ValueError(f"{cls.report} does not hold a {cls.stage} summary: {exc}") from exc


@dataclass(frozen=True)
class ValidateSummary(Summary):
    stage: ClassVar[str] = "validate"
    report: ClassVar[str] = "validate_report"
    files: int
    files_already_consumed: int
    files_unreadable: int
    rows_read: int
    rows_accepted: int
    rows_quarantined: int
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    #: rows repeating an answer the ledger already holds: counted, not entered again
    rows_already_consumed: int = 0


@dataclass(frozen=True)
class FeaturesSummary(Summary):
    stage: ClassVar[str] = "features"
    report: ClassVar[str] = "features_report"
    #: the text columns vectorized (empty: a tabular pool) and whether they were detected
    text_columns: list[str]
    detected: bool
    #: fitted this round (the pool or the settings changed) or carried from the last round
    refit: bool
    n_features: int
    fitted_rows: int = 0
    vocabulary: dict[str, int] = field(default_factory=dict)
    #: median words per value of each detected text column
    median_words: dict[str, float] = field(default_factory=dict)
    svd_components: int = 0

    def describe(self) -> str:
        """One line for the round report: which columns are text and where the vocabulary
        came from ("" for a tabular pool)."""
        if not self.text_columns:
            return ""
        columns = ", ".join(
            f"{name} ({self.vocabulary.get(name, 0):,} terms"
            + (f", median {self.median_words[name]:g} words" if name in self.median_words else "")
            + ")"
            for name in self.text_columns
        )
        how = (
            "detected (set project.text_columns to choose)"
            if self.detected
            else "from project.text_columns"
        )
        fitted = (
            f"vocabulary fitted this round on {self.fitted_rows:,} pool items"
            if self.refit
            else "vocabulary carried from the last round (pool and settings unchanged)"
        )
        return f"text columns as TF-IDF, {how}: {columns}; {fitted}"


@dataclass(frozen=True)
class MergeSummary(Summary):
    stage: ClassVar[str] = "merge"
    report: ClassVar[str] = "merge_report"
    events_label: int
    events_relabel: int
    events_rejected: int
    events_resolved: int
    events_consensus: int
    consensus_method: str
    crowdlab_not_used_because: str
    labeled_items: int
    train_items: int
    test_items: int
    items_in_disagreement: int
    annotators: int
    votes_for_new_classes: dict[str, int] = field(default_factory=dict)
    #: items an annotator skipped (``skip`` events: not votes)
    events_skip: int = 0


@dataclass(frozen=True)
class FlagSummary(Summary):
    stage: ClassVar[str] = "flag"
    report: ClassVar[str] = "flag_report"
    checked: int
    flagged: int
    handling: str
    #: why labels were not checked: all of them (``checked`` 0), or some (a rare class's)
    skipped_because: str
    ledger_events: int
    ledger_events_added: int
    #: labels a second opinion confirmed after an earlier flag: not flagged again
    confirmed_kept: int = 0


@dataclass(frozen=True)
class TrainSummary(Summary):
    stage: ClassVar[str] = "train"
    report: ClassVar[str] = "train_report"
    trained: bool
    n_train_labels: int
    n_used: int
    n_excluded: int


@dataclass(frozen=True)
class EvaluateSummary(Summary):
    stage: ClassVar[str] = "evaluate"
    report: ClassVar[str] = "metrics"
    round_id: int
    n_test: int
    n_train: int
    candidate: dict[str, float] | None
    champion: dict[str, float] | None
    promoted: bool
    gate: str
    champion_round: int | None

    @property
    def candidate_macro_f1(self) -> float | None:
        return None if self.candidate is None else self.candidate.get("macro_f1")


@dataclass(frozen=True)
class HealthSummary(Summary):
    """The loop looking at itself: the model rating, the stop signal, drift, and the plan the
    select stage follows. Factors are 0-100 (higher is better), None when not computed, with
    the reason in ``not_rated_because``."""

    stage: ClassVar[str] = "health"
    report: ClassVar[str] = "health_report"
    round_id: int
    #: the model the round's signals are computed on (the candidate trained this round)
    model_round: int | None = None
    not_rated_because: str = ""
    # -- the rating --------------------------------------------------------------------
    rating: float | None = None
    balance: float | None = None
    coverage: float | None = None
    all_labels: float | None = None
    worst_labels: float | None = None
    #: the balance classifier's out-of-fold AUC, labeled items against the pool
    balance_auc: float | None = None
    #: the share of training labels on items chosen at random (seed, QC)
    random_share: float | None = None
    #: the top-probability threshold that gives ``health.coverage_precision`` on test items
    coverage_threshold: float | None = None
    #: the classes of the worst labels factor, worst first, with their test F1
    worst_classes: dict[str, float] = field(default_factory=dict)
    #: factor -> the action that would raise it
    actions: dict[str, str] = field(default_factory=dict)
    # -- the stop signal ---------------------------------------------------------------
    stop_set_size: int = 0
    kappa: float | None = None
    kappa_mean: float | None = None
    changed_share: float | None = None
    mean_entropy: float | None = None
    stop_advised: bool = False
    stop_reason: str = ""
    #: the rule that fired ("threshold", "plateau"; "" when none) and the guard that held it
    #: back ("new classes", "class kappa"; "" when none)
    stop_criterion: str = ""
    stop_held: str = ""
    #: the mean kappa's rise since the window before (the slope rule)
    kappa_rise: float | None = None
    #: this round's candidate against a model refit on a bootstrap of its labels, and the mean
    #: over the window (the noise floor)
    noise_kappa: float | None = None
    noise_kappa_mean: float | None = None
    #: this round's candidate against a model refit without a random batch of its labels as
    #: large as the round's new ones
    drop_kappa: float | None = None
    #: one-vs-rest kappa per class between successive rounds: the smallest and the mean
    class_kappa_min: float | None = None
    class_kappa_mean: float | None = None
    #: classes first labeled or first predicted within the window (the class guard)
    new_classes: tuple[str, ...] = ()
    # -- what select does next ---------------------------------------------------------
    explore_fraction: float = 0.0
    explore_classes: tuple[str, ...] = ()
    rebalance_fraction: float = 0.0
    #: each rule that fired, as a sentence (the report quotes them)
    plan_reasons: tuple[str, ...] = ()
    # -- drift on items that arrived since the last round ------------------------------
    drift_new_items: int = 0
    drift_checked: bool = False
    drift_warning: bool = False
    drift_auc: float | None = None
    drift_p_value: float | None = None
    drift_features: tuple[str, ...] = ()
    drift_prediction_shift: bool | None = None

    @property
    def factors(self) -> dict[str, float | None]:
        return {
            "balance": self.balance,
            "coverage": self.coverage,
            "all_labels": self.all_labels,
            "worst_labels": self.worst_labels,
        }

    def describe(self) -> list[str]:
        """What the health stage said, in a few lines: the rating, the stop advice, the plan
        and drift (the commit message, the round report)."""
        lines = []
        if self.rating is None:
            lines.append(f"rating: none ({self.not_rated_because or 'not computed'})")
        else:
            factors = ", ".join(
                f"{name.replace('_', ' ')} {value:.0f}"
                for name, value in self.factors.items()
                if value is not None
            )
            worst = f"; worst: {', '.join(self.worst_classes)}" if self.worst_classes else ""
            lines.append(f"rating: {self.rating:.0f}/100 ({factors}{worst})")
            advice = "STOP labeling" if self.stop_advised else "go on labeling"
            lines.append(f"stop signal: {advice} ({self.stop_reason})")
        lines.extend(f"plan: {reason}" for reason in self.plan_reasons)
        if self.drift_checked:
            verdict = "DRIFT" if self.drift_warning else "no drift"
            used = (
                f" ({', '.join(self.drift_features)})"
                if self.drift_warning and self.drift_features
                else ""
            )
            lines.append(f"arrivals: {self.drift_new_items} new items, {verdict}{used}")
        return lines


@dataclass(frozen=True)
class ScoreSummary(Summary):
    stage: ClassVar[str] = "score"
    report: ClassVar[str] = "score_report"
    pool_items: int
    selectable_items: int
    strategy: str
    chunks: int
    predicted_items: int
    mean_confidence: float | None
    committee_size: int | None = None


@dataclass(frozen=True)
class SelectSummary(Summary):
    stage: ClassVar[str] = "select"
    report: ClassVar[str] = "select_report"
    batch_size: int
    n_seed: int
    n_active: int
    n_qc: int
    n_test: int
    n_relabel: int
    issued_total: int
    #: pool items never issued, after this batch; 0 means the pool is exhausted
    unlabeled_left: int = 0
    #: the slices the health stage planned (tasks/health.py)
    n_explore: int = 0
    n_rebalance: int = 0

    @property
    def parts(self) -> dict[str, int]:
        """The batch's parts that have items, by reason."""
        counts = {
            "seed": self.n_seed,
            "active": self.n_active,
            "qc": self.n_qc,
            "test": self.n_test,
            "relabel": self.n_relabel,
            "explore": self.n_explore,
            "rebalance": self.n_rebalance,
        }
        return {reason: n for reason, n in sorted(counts.items()) if n}


@dataclass(frozen=True)
class ExportSummary(Summary):
    stage: ClassVar[str] = "export"
    report: ClassVar[str] = "export_report"
    exported_items: int
    expected_annotation_seconds: float | None


SUMMARIES: dict[str, type[Summary]] = {
    cls.stage: cls
    for cls in (
        ValidateSummary,
        FeaturesSummary,
        MergeSummary,
        FlagSummary,
        TrainSummary,
        EvaluateSummary,
        HealthSummary,
        ScoreSummary,
        SelectSummary,
        ExportSummary,
    )
}


@dataclass(frozen=True)
class RoundSummaries:
    """Every stage's summary of one round; None for a stage that has not run (yet)."""

    validate: ValidateSummary | None = None
    features: FeaturesSummary | None = None
    merge: MergeSummary | None = None
    flag: FlagSummary | None = None
    train: TrainSummary | None = None
    evaluate: EvaluateSummary | None = None
    health: HealthSummary | None = None
    score: ScoreSummary | None = None
    select: SelectSummary | None = None
    export: ExportSummary | None = None

    @classmethod
    def of(cls, summaries: Mapping[str, Summary]) -> RoundSummaries:
        return cls(**dict(summaries))

    def items(self) -> list[tuple[str, Summary]]:
        """``(stage, summary)`` of the stages that ran, in order."""
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name)]

    def to_dicts(self) -> dict[str, dict[str, Any]]:
        """Each stage's summary in its JSON form (what MLflow logs, flattened)."""
        return {stage: summary.to_dict() for stage, summary in self.items()}


def format_counts(counts: Mapping[str, int]) -> str:
    """Counts by name as people read them: ``{"seed": 160, "test": 40}`` is
    ``seed 160, test 40``."""
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def read_round_summaries(
    load: Callable[[str], Any], *, stages: tuple[str, ...] = tuple(SUMMARIES)
) -> RoundSummaries:
    """The summaries of ``stages`` as their reports hold them (``load``: a report's artifact
    name -> its JSON, or None when absent). A stage without a report is None."""
    found: dict[str, Summary] = {}
    for stage in stages:
        cls = SUMMARIES[stage]
        data = load(cls.report)
        if data:
            found[stage] = cls.from_dict(data)
    return RoundSummaries.of(found)
