"""Typed, frozen parameters: one section of ``params.yaml`` per stage.

``params.yaml`` is loaded once per round into :class:`Params`; every stage receives only its
own section (plus ``project``). Unknown keys are errors, so a typo in ``params.yaml`` or in a
``-S section.key=value`` override fails loudly instead of being ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProjectParams(_Section):
    """What the items and labels are."""

    classes: tuple[str, ...] = Field(min_length=2)
    random_state: int = 0
    # false: a label outside ``classes`` is quarantined (unknown_class). true: it is accepted
    # into the ledger and waits (counted in merge's report) until the class is added here
    allow_new_classes: bool = False
    # the columns that hold prose (tickets, emails, news): each becomes TF-IDF features (the
    # ``text`` section). None: detected, a string column whose median value has 4 words or
    # more (the features stage's report names them); []: none, every string is a category
    text_columns: tuple[str, ...] | None = None
    # multiclass: one class per item. multilabel: a set of one or more classes per item (news
    # topics, ticket tags), one booster per label (tasks/multilabel.py)
    task: Literal["multiclass", "multilabel"] = "multiclass"
    # how a label set is written in a CSV cell (and in the ledger): grain|wheat
    label_separator: str = Field(default="|", min_length=1)

    @model_validator(mode="after")
    def _separator_not_in_a_class(self) -> ProjectParams:
        inside = [c for c in self.classes if self.label_separator in c]
        if self.task == "multilabel" and inside:
            raise ValueError(
                f"classes {inside} hold the label separator {self.label_separator!r}: choose "
                "another project.label_separator"
            )
        return self

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"class names must be unique, got {list(value)}")
        if any(not name.strip() for name in value):
            raise ValueError(f"class names must be non-empty, got {list(value)}")
        return value


class TextParams(_Section):
    """How text columns become features (scikit-learn's ``TfidfVectorizer``) and how the
    diversity strategy embeds a text item (truncated SVD of its TF-IDF row)."""

    lowercase: bool = True
    # words (1) or words and pairs of words (2)
    ngram_max: int = Field(default=1, ge=1, le=3)
    # a term is kept if it occurs in at least this many of the fitted documents ...
    min_df: int = Field(default=2, ge=1)
    # ... and in at most this share of them
    max_df: float = Field(default=1.0, gt=0.0, le=1.0)
    # the most frequent terms kept per text column
    max_features: int = Field(default=20000, ge=1)
    # 1 + log(tf): a word repeated ten times is not ten times the evidence
    sublinear_tf: bool = True
    # the vocabulary and the SVD are fitted on at most this many pool rows (drawn at random)
    fit_rows: int = Field(default=100000, ge=10)
    # dimensions of the text embedding the diversity strategy spreads its batch in
    svd_components: int = Field(default=64, ge=1)


class ValidateParams(_Section):
    # a label may carry a clock slightly ahead of ours without being "from the future"
    max_clock_skew_seconds: int = Field(default=300, ge=0)
    # a batch stays open for labels this many rounds after it was issued; None = forever
    batch_ttl_rounds: int | None = Field(default=None, ge=1)
    # how a date written a/b/yyyy (30/11/2026, 11/30/2026 4:04 PM) is read: "day_first",
    # "month_first", or "auto": a part above 12 is the day, and a date whose parts are both
    # 12 or less takes the order of the other dates of its file, or is quarantined
    # (bad_timestamp) with a sentence naming it when they do not tell
    date_order: Literal["auto", "day_first", "month_first"] = "auto"


class MergeParams(_Section):
    # "latest": on a tie between classes the most recent vote wins (a relabel after a flag
    # is the newer, more informed answer)
    tie_rule: Literal["latest"] = "latest"
    # auto: CROWDLAB for training items once enough have several votes, majority otherwise;
    # and a model that agrees with the other annotators' majority less often than an
    # annotator does never overrules a strict majority of 2+ votes (measured in bench/README,
    # "Crowd, flags and ActiveLab": CROWDLAB alone fell below majority on crowds with a weak
    # model, this never did). crowdlab: CROWDLAB's consensus as it comes
    consensus: Literal["auto", "majority", "crowdlab"] = "auto"
    crowdlab_min_items: int = Field(default=50, ge=1)
    cv_folds: int = Field(default=5, ge=2)
    # an item whose votes agree less than this goes back to annotators for another vote
    relabel_below_agreement: float = Field(default=0.6, ge=0.0, le=1.0)


class FlagParams(_Section):
    enabled: bool = True
    handling: Literal["exclude", "downweight", "keep"] = "exclude"
    downweight: float = Field(default=0.2, gt=0.0, le=1.0)
    cv_folds: int = Field(default=5, ge=2)
    # below this many training labels out-of-fold probabilities are too noisy to accuse anyone
    min_labels: int = Field(default=50, ge=10)
    # how many labels are flagged: as many as cleanlab estimates are wrong (filter_by), and,
    # below estimate_from_labels training labels, at most max_fraction of them. There the
    # out-of-fold model is weak and the estimate counts its errors too: 12-17% of clean sets
    # of 100-300 labels, 27% of sets of 200 with 10% wrong. bench/crowd.py flags (five PMLB
    # sets, 0/10/20% wrong; 8 seeds at 100-500 labels, 3 at 1,000-2,000): a model trained
    # without the flagged labels scores +0.0058 test macro-F1 on average over no flagging
    # with this rule, +0.0043 with a 10% bound below 500, +0.0026 with the former rule
    # (5% cap at every size), +0.0039 with a fixed 15% cap, -0.0069 with the estimate alone
    max_fraction: float = Field(default=0.05, gt=0.0, le=1.0)
    estimate_from_labels: int = Field(default=500, ge=0)
    # which labels are flagged: low_self_confidence (cleanlab's own estimate of the number of
    # label issues, count.num_label_issues, the lowest self-confidence first; at 2,000 labels
    # with 10% wrong, flag F1 0.56-0.94 on five sets against 0.44-0.66 with the former
    # prune_by_noise_rate and 5% cap) or low_normalized_margin (the same number, by
    # normalized margin); or the items one of cleanlab's filters returns
    # (find_label_issues' filter_by)
    filter_by: Literal[
        "low_self_confidence",
        "low_normalized_margin",
        "prune_by_noise_rate",
        "prune_by_class",
        "both",
        "confident_learning",
        "predicted_neq_given",
    ] = "low_self_confidence"
    # below forest_below_labels training labels, in a tabular space, the out-of-fold
    # probabilities are the mean of LightGBM's and a random forest's of forest_trees trees
    # (0: LightGBM alone). The forest lowers cleanlab's count, which overshoots while the
    # out-of-fold model is weak: at 2,000 labels with 10% wrong, flag F1 0.78 -> 0.84 on
    # letter and satimage, 0.722 -> 0.746 on average over seven sets; at 4,000 and 7,000
    # labels 0.754 -> 0.749 and 0.768 -> 0.760 over six, where LightGBM's count no longer
    # overshoots (bench/README, "Flags: a forest beside LightGBM"), at 2-9x LightGBM's cost
    forest_trees: int = Field(default=100, ge=0)
    forest_below_labels: int = Field(default=3_000, ge=0)
    # flagged items go back to annotators once; an item that already has this many votes
    # is not re-queued again
    max_votes_for_relabel: int = Field(default=1, ge=1)


class TrainParams(_Section):
    # a multiclass model's cost (fit, predict) grows with rounds x classes: 50 rounds at 0.2
    # cost half of LightGBM's default 100 at 0.1 and score 0.0008 macro-F1 lower on average
    # on clean labels (eight sets, 100 labels to 30,000 or all; 0.0017 lower above 1,000
    # labels); with 5% wrong labels no difference in AULC over 10 seeds on four sets
    # (docs/decisions.md). A final model on many labels may want more rounds at a lower rate
    num_boost_round: int = Field(default=50, ge=1)
    learning_rate: float = Field(default=0.2, gt=0.0, le=1.0)
    num_leaves: int = Field(default=15, ge=2)
    # "auto" scales with the number of labels: a few dozen labels must still allow splits,
    # hundreds of thousands must not grow leaves of a handful of rows
    min_child_samples: int | Literal["auto"] = "auto"
    min_child_samples_fraction: float = Field(default=0.01, gt=0.0, lt=1.0)
    min_child_samples_max: int = Field(default=20, ge=1)
    min_child_samples_min: int = Field(default=2, ge=1)
    feature_fraction: float = Field(default=0.9, gt=0.0, le=1.0)
    lambda_l2: float = Field(default=1.0, ge=0.0)
    class_weight: Literal["balanced", "none"] = "balanced"
    # One thread. Measured on 2 idle cores (bench/README.md, "Threads"): one thread fits 500
    # labels faster (0.022 s against 0.034 s), 5,000 as fast, 20,000 and 100,000 1.5-1.75x
    # slower; with another process holding a core, two threads collapse (OpenMP waits for the
    # busy core): a 200,000-item round took 18.3 s with 2, 4.7 s with 1. Set 2 or more for
    # large label sets on a machine of its own.
    num_threads: int = Field(default=1, ge=1)


class EvaluateParams(_Section):
    # "map" (mean average precision over labels) and "micro_f1" are label-set metrics
    # (project.task: multilabel), where "macro_f1" is macro over labels
    gate_metric: Literal["macro_f1", "accuracy", "map", "micro_f1"] = "macro_f1"
    # the candidate replaces the champion when candidate >= champion + gate_min_delta
    gate_min_delta: float = 0.0


#: The names of tasks/strategies.py's registry, kept here so that params are checked without
#: importing the strategies (numpy, scikit-learn); tests/test_cli_edge.py keeps the two equal.
STRATEGY_NAMES = (
    "random",
    "least_confidence",
    "margin",
    "entropy",
    "qbc_vote_entropy",
    "qbc_consensus_margin",
    "diversity",
    "class_balance",
    "cost_aware",
    "ml_mean_uncertainty",
    "ml_max_uncertainty",
    "ml_diversity",
)
#: The strategies of label sets (``project.task: multilabel``): registered with
#: ``task="multilabel"``; the others score one class per item.
MULTILABEL_STRATEGIES = ("ml_mean_uncertainty", "ml_max_uncertainty", "ml_diversity")
#: Strategies that read no probability (random), and ``diversity``, which a multilabel project
#: runs as ``ml_diversity`` (:meth:`Params.get_strategy`): allowed for either task.
TASK_FREE_STRATEGIES = ("random", "diversity")


class ScoreParams(_Section):
    # a name of tasks/strategies.py's registry; see docs/decisions.md for each formula and
    # bench/label_efficiency.md for why diversity (margin, then k-means) is the default
    strategy: str = "diversity"

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGY_NAMES:
            raise ValueError(
                f"unknown strategy {value!r}; the strategies are {', '.join(STRATEGY_NAMES)}"
            )
        return value

    chunk_size: int = Field(default=50_000, ge=1)
    # where the pool's pieces are scored: in the round's own process, or on the workers of a
    # running Dask scheduler at dask_address (alloop round --dask-address sets both for one
    # run). The scores are the same either way, so neither is a DVC param of the stage.
    executor: Literal["local", "dask"] = "local"
    dask_address: str | None = None
    dask_timeout_seconds: float = Field(default=30.0, gt=0.0)
    # query by committee: LightGBM models on the training labels, differing by seed and by
    # the rows each tree sees (bagging_fraction of them, re-drawn every bagging_freq trees)
    committee_size: int = Field(default=5, ge=2, le=50)
    bagging_fraction: float = Field(default=0.8, gt=0.0, le=1.0)
    bagging_freq: int = Field(default=1, ge=1)
    # diversity: the batch is spread among the diversity_factor * batch_size most uncertain
    diversity_factor: int = Field(default=10, ge=1)
    # how the batch is spread: k-means with batch_size clusters, and the most uncertain
    # candidate of each (docs/decisions.md, "Diversity"); or the candidate nearest each
    # centre, unweighted or with candidates weighted by informativeness 1 - margin; or
    # farthest-first traversal
    diversity_method: Literal[
        "kmeans", "weighted_kmeans", "kmeans_most_uncertain", "farthest_first"
    ] = "kmeans_most_uncertain"
    # the space diversity measures distances in: numeric features standardized with the mean
    # and standard deviation of the training rows
    embedding: Literal["standardized"] = "standardized"
    # class_balance: weight ((mean count + 1) / (count of the predicted class + 1)) ** power
    class_balance_power: float = Field(default=1.0, ge=0.0)


class SelectParams(_Section):
    batch_size: int = Field(default=100, ge=1)
    seed_size: int = Field(default=200, ge=1)
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    qc_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    relabel_max_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    # the explore and rebalance slices the health stage plans are drawn from a uniform
    # sample of this many selectable items: a 2.5% class still has ~500 items in it, and the
    # slices' cost does not grow with the pool
    slice_candidates: int = Field(default=20_000, ge=100)

    @model_validator(mode="after")
    def _fractions_fit(self) -> SelectParams:
        if self.test_fraction + self.qc_fraction >= 1.0:
            raise ValueError(
                "select.test_fraction + select.qc_fraction must be < 1 so that the batch "
                f"keeps room for actively selected items, got "
                f"{self.test_fraction} + {self.qc_fraction}"
            )
        return self


class StopParams(_Section):
    """The stop signal: stabilizing predictions (Bloodgood and Vijay-Shanker, 2009)."""

    # items of the pool drawn at random once (all, if the pool has fewer) on which each
    # round's model predicts; their agreement from round to round is the signal
    set_size: int = Field(default=2000, ge=10)
    # the advice "stop" comes when Cohen's kappa between successive models, averaged over the
    # last ``window`` rounds, reaches ``kappa``. The published criterion's 0.99 fired in 10 of
    # 18 campaigns by 2,000 labels (batches of 100), at 2.0x the labels to 98% of full-data F1;
    # 0.97, chosen on satimage and checked on pendigits, fired in 12 of 12, at 1.3x, losing
    # 0.006 macro-F1 (median; 0.016 worst). Magic's kappa levels off at 0.91-0.93 and never
    # fires. Smaller batches change the model less per round: with batches of 50 a threshold
    # fires earlier (bench/README.md, "Health")
    kappa: float = Field(default=0.97, gt=0.0, le=1.0)
    window: int = Field(default=3, ge=1)
    # a second way to fire, the plateau, for sets whose kappa levels off below ``kappa``
    # (magic, adult, sleep: 0.87-0.94). "slope" (the gradient criterion of Laws and Schuetze,
    # 2008): the mean kappa is at least ``plateau_kappa`` and rose less than ``plateau_rise``
    # on the mean of the ``window`` rounds before. "noise": the mean kappa reaches the mean
    # agreement of each round's candidate with a model refit on a bootstrap resample of its
    # labels (``noise_kappa``) minus ``noise_margin``; "drop": the same with a refit that
    # leaves out a random batch as large as the round's (``drop_kappa``); "noise_slope" and
    # "drop_slope": that floor as the level, and flat. Chosen on satimage, magic and shuttle
    # (10 seeds, batches of 100 to 2,000; bench/README.md, "Health: the stop signal's plateau
    # and class guard"): the bootstrap floor sits below successive kappa from 400-500 labels
    # on (fires there, losing 0.025 median), the drop floor tracks it (fires at random,
    # 0.013-0.024 lost); slope 0.85 / 0.01 fires on magic at 1,100 labels losing 0.0112
    # (0.0224 worst); 0.875 / 0.01 at 1,150 losing 0.0085 (0.0174 worst, 1.55x the labels to
    # 98%), and with ``class_kappa`` 0.5 meets every goal pooled over the three sets. Held
    # out: pendigits unchanged (threshold, 600 labels); adult fires 10 of 10 at 2.4x the
    # labels to 98% (0.0077 worst); sleep, still learning, fires 8 of 10 losing 0.021 (0.024
    # worst): no plateau variant measured tells a set still learning
    # The refits behind noise and drop (two more fits a round) run only when ``plateau``
    # names them: with them, the health stage was 10.1% of a 200,000-item round
    plateau: Literal["off", "noise", "drop", "slope", "noise_slope", "drop_slope"] = "slope"
    plateau_kappa: float = Field(default=0.875, gt=0.0, le=1.0)
    plateau_rise: float = Field(default=0.01, ge=0.0)
    noise_margin: float = Field(default=0.0, ge=-1.0, le=1.0)
    # the class guard holds a fired rule back while a class is still unstable: the smallest
    # one-vs-rest kappa of a class between successive rounds, averaged over the window, is
    # under ``class_kappa`` (0: off; a class newly predicted has 0 that round). On shuttle it
    # took the worst loss from 0.0795 (seed 5 stopped at 400 labels before learning class 7)
    # to 0.0090, stopping at 500 (1.25x); 0.3 still let seed 5 stop, 0.7 held to 600
    # (1.50x, 0.0221 worst). ``guard_new_classes``: hold back while a class got its first
    # training label or was first predicted on the stop set within the window; on shuttle
    # 600 labels, 0.0221 worst: later and no safer than the kappa guard. Held out, kddcup (3
    # seeds): the guard moves the stop from 400 to 800-900 labels and the loss from 0.28-0.43
    # to 0.075-0.178; still far from the goal
    class_kappa: float = Field(default=0.5, ge=0.0, le=1.0)
    guard_new_classes: bool = False
    # advise: rounds go on and the advice is shown; pause: nightly rounds skip with the
    # reason until a person resumes (``alloop resume``)
    action: Literal["advise", "pause"] = "advise"


class HealthParams(_Section):
    """The model rating, the explore and rebalance rules, and drift on arriving items."""

    enabled: bool = True
    # coverage: the share of the pool whose top probability clears the lowest threshold
    # that gives this precision on the test items
    coverage_precision: float = Field(default=0.95, gt=0.0, le=1.0)
    # ... counted over at least this many test items: the demo's first threshold was the single
    # most confident test item (right, so "100% precision") and gave a coverage of 0.25%
    coverage_min_test_items: int = Field(default=20, ge=1)
    # a class is rated (worst labels) and checked for being missed only with this many
    # test items; below it its F1 is too noisy to name it
    min_class_test_items: int = Field(default=5, ge=1)
    # the worst labels factor: the mean F1 of this share of the rated classes (at least one)
    worst_share: float = Field(default=0.1, gt=0.0, le=1.0)
    # the balance classifier: labeled items against at most this many random pool items
    balance_pool_sample: int = Field(default=5000, ge=100)
    balance_cv_folds: int = Field(default=5, ge=2)
    # threads of the stage's own LightGBM fits (balance, the random-only model): they fit a few
    # thousand rows, where one thread is about as fast on an idle machine (the stage at 200,000
    # items: 0.33 s against 0.27 s) and does not collapse when another process holds a core
    # (0.42 s against 0.8-5 s with two threads; bench/README.md, "Health")
    num_threads: int = Field(default=1, ge=1)
    # below this many training labels the balance classifier is not fitted
    min_labels: int = Field(default=50, ge=10)
    # a rebalance slice of this share of the batch when the balance factor is under
    # ``rebalance_below``
    rebalance_below: float = Field(default=70.0, ge=0.0, le=100.0)
    rebalance_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    # an explore slice of this share of the batch when the random items show the actively
    # chosen labels are not paying (a class missed, or a curve behind random's)
    explore_fraction: float = Field(default=0.3, ge=0.0, lt=1.0)
    # a class is missed when the model's recall on its random (test, QC, seed) items is
    # under this
    missed_recall_below: float = Field(default=0.5, ge=0.0, le=1.0)
    # ... and only when the actively chosen labels hold significantly fewer of it than its
    # share of the random items predicts (one-sided binomial test, Bonferroni over classes).
    # Recall alone fired for letter's hard classes, which margin sampling over-represents, in
    # 89% of rounds; a share ratio still fired after letter's 100-item seed batch, where
    # classes are unlabeled by chance: both cost most of the lead over random
    # (bench/README.md, "Health")
    missed_alpha: float = Field(default=0.01, gt=0.0, lt=1.0)
    # ... except a class with no training label at all once the strategy has chosen labels:
    # missed at once (the test waits for 0 of about 250 active labels: 2-3 rounds of 100)
    missed_unlabeled: bool = True
    # the explore slice ranks a class by the model's probability of it once the model has this
    # many training labels of it; below, by nearness to the class's labeled (random) items
    explore_model_min_labels: int = Field(default=5, ge=1)
    # the curve is behind random's when a model on the random training labels alone scores
    # at least the candidate's macro-F1 minus this on the test items
    behind_random_tolerance: float = Field(default=0.0, ge=0.0, le=1.0)
    # drift: a feature is shifted when its KS test rejects at this level after Bonferroni's
    # correction, or its PSI exceeds psi_alert; the classifier's AUC is tested at the level
    drift_alpha: float = Field(default=0.01, gt=0.0, lt=1.0)
    drift_psi_alert: float = Field(default=0.2, gt=0.0)
    # arrivals smaller than this are not compared (too few for any test to mean anything)
    drift_min_items: int = Field(default=50, ge=10)
    # the pool side of the comparison: at most this many random items of the pool joined
    drift_reference_sample: int = Field(default=20_000, ge=100)


class AnnotationParams(_Section):
    """The annotation-time model (tasks/annotation_time.py).

    3 s and 7 s are the medians measured in a published study of pre-annotation: confirming a
    correct suggestion versus assigning the class by hand. ``switch_seconds`` is an estimate of
    the cost of moving on to items of another suggested class, ``label_seconds`` one of each
    label of a set labeled by hand after its first (``project.task: multilabel``).
    """

    confirm_seconds: float = Field(default=3.0, gt=0.0)
    assign_seconds: float = Field(default=7.0, gt=0.0)
    switch_seconds: float = Field(default=2.0, ge=0.0)
    label_seconds: float = Field(default=2.0, ge=0.0)


class ExportParams(_Section):
    labelstudio_from_name: str = "label"
    labelstudio_to_name: str = "item"
    # the columns a Label Studio task shows the annotator, in this order (empty: every feature
    # column of the pool)
    labelstudio_columns: tuple[str, ...] = ()
    # a second opinion on a flagged label goes out without the model's suggestion: shown the
    # model's guess, an annotator is invited to flip a label that was right
    blind_second_opinion: bool = True


class LabelStudioParams(_Section):
    """The Label Studio project this workspace labels in (``flows/labelstudio.py``).

    ``alloop labelstudio connect`` writes ``url`` and ``project_id``; without them the
    workspace works with files alone. The API token is never a param.
    """

    url: str | None = None
    project_id: int | None = Field(default=None, ge=1)
    # the environment variable that holds the API token (else .alloop/labelstudio-token)
    token_env: str = "ALLOOP_LABELSTUDIO_TOKEN"
    # a call that takes longer fails; the round goes on without it and the next one retries
    timeout_seconds: float = Field(default=30.0, gt=0.0)
    # tasks per import request
    push_chunk: int = Field(default=500, ge=1)

    @property
    def connected(self) -> bool:
        """Whether rounds pull from and push to a project (both the URL and the id set)."""
        return bool(self.url) and self.project_id is not None


class Params(_Section):
    project: ProjectParams
    text: TextParams = Field(default_factory=TextParams)
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    merge: MergeParams = Field(default_factory=MergeParams)
    flag: FlagParams = Field(default_factory=FlagParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    health: HealthParams = Field(default_factory=HealthParams)
    stop: StopParams = Field(default_factory=StopParams)
    score: ScoreParams = Field(default_factory=ScoreParams)
    select: SelectParams = Field(default_factory=SelectParams)
    export: ExportParams = Field(default_factory=ExportParams)
    annotation: AnnotationParams = Field(default_factory=AnnotationParams)
    labelstudio: LabelStudioParams = Field(default_factory=LabelStudioParams)

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _fits_the_task(self) -> Params:
        """The strategy and the gate's metric exist for the project's task."""
        multilabel = self.project.task == "multilabel"
        strategy = self.score.strategy
        if multilabel and strategy not in (*MULTILABEL_STRATEGIES, *TASK_FREE_STRATEGIES):
            raise ValueError(
                f"score.strategy {strategy!r} scores one class per item; project.task is "
                f"multilabel: choose one of {[*MULTILABEL_STRATEGIES, *TASK_FREE_STRATEGIES]}"
            )
        if not multilabel and strategy in MULTILABEL_STRATEGIES:
            raise ValueError(
                f"score.strategy {strategy!r} scores label sets; project.task is multiclass"
            )
        label_set_metrics = ("map", "micro_f1")
        if multilabel and self.evaluate.gate_metric == "accuracy":
            raise ValueError("evaluate.gate_metric accuracy is of one class per item: use map")
        if not multilabel and self.evaluate.gate_metric in label_set_metrics:
            raise ValueError(
                f"evaluate.gate_metric {self.evaluate.gate_metric!r} is a label-set metric; "
                "project.task is multiclass"
            )
        return self

    def get_strategy(self) -> str:
        """The strategy the score stage runs (:func:`get_task_strategy` of ``score.strategy``)."""
        return get_task_strategy(self.score.strategy, self.project.task)


def get_task_strategy(name: str, task: str) -> str:
    """The strategy ``name`` runs as for items of ``task``: in a multilabel project the default
    ``diversity`` is its label-set form, ``ml_diversity``; any other name is itself."""
    return "ml_diversity" if task == "multilabel" and name == "diversity" else name


class ParamsError(ValueError):
    """``params.yaml`` or an override does not describe a valid configuration."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into its key path and a YAML-typed value."""
    key, sep, raw = text.partition("=")
    path = [part for part in key.strip().split(".") if part]
    if not sep or len(path) < 2:
        raise ParamsError(
            f"override {text!r} must look like section.key=value (e.g. train.num_leaves=63)"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ParamsError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return path, value


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a deep copy of ``raw`` with every ``section.key=value`` override applied."""
    result: dict[str, Any] = yaml.safe_load(yaml.safe_dump(dict(raw))) or {}
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ParamsError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return result


def load_params(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> Params:
    """Validate a parsed ``params.yaml`` (plus overrides) into a frozen :class:`Params`."""
    data = apply_overrides(raw, overrides)
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ParamsError(f"invalid params.yaml: {problems}") from exc


def dump_params(params: Params) -> dict[str, Any]:
    """The plain-YAML form of ``params`` (section names as they appear in ``params.yaml``)."""
    return params.model_dump(mode="json", by_alias=True)
