"""Stage 2, merge: turn the round's accepted and rejected rows into label events, and resolve
every item's current label from all votes so far.

The events of a round (``label``, ``relabel``, ``skip``, ``rejected``, ``resolved``,
``consensus``) go to
``data/interim/events.parquet``; flag adds its ``flagged`` events and appends the round to the
ledger, so that the ledger gets one append per round and never an edit.

An annotator is his tool's user id when he has one (``annotator_id``), else his name: a Label
Studio user whose email became known later is still one annotator, named by his latest name.
A ``skip`` (an accepted row without a label) is recorded, never counted as a vote.

Consensus: each annotator's latest vote on an item counts once. With enough items labeled by
several annotators, training items are resolved by cleanlab's CROWDLAB (votes weighed by each
annotator's estimated quality and by an out-of-fold model); otherwise, and always for test
items (a test label must not depend on the model it measures), by majority, a tie going to the
class whose latest vote is the most recent. In ``auto`` mode a model that agrees with the
annotators less often than they agree with each other cannot overrule a strict majority (see
:func:`get_vote_agreement`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from cleanlab.multiannotator import get_label_quality_multiannotator

from tasks import schema
from tasks.context import StageContext, StageSpec
from tasks.faults import crash_point
from tasks.features import FeatureSpace, load_space
from tasks.ledger import get_active_events
from tasks.model import encode_labels, get_out_of_fold_pred_probs
from tasks.multilabel import LabelSets, get_label_set_majority, get_label_sets, is_known_set
from tasks.params import MergeParams, TrainParams
from tasks.summaries import MergeSummary

#: The events that are votes; a ``skip`` is an annotator's answer that is not one.
VOTES = ("label", "relabel")
SKIP = "skip"

STAGE = StageSpec(
    name="merge",
    module=__name__,
    code=("tasks/ledger.py", "tasks/model.py", "tasks/features.py"),
    reads=("accepted", "rejected", "pool", "feature_space"),
    writes=("current", "events", "annotators", "merge_report"),
    params=("project", "merge", "train"),
)


def get_label_events(
    ledger: pd.DataFrame, accepted: pd.DataFrame, rejected: pd.DataFrame, *, round_id: int
) -> pd.DataFrame:
    """The round's ``label``/``relabel``/``skip`` events (accepted rows) and ``rejected``
    events.

    An annotator's first vote on an item is a ``label`` event, a later one a ``relabel``; an
    accepted row without a label is a ``skip``, which is not a vote. "The same annotator" is
    :func:`tasks.schema.get_annotator_key`. Only events of earlier rounds count as "before",
    so the result does not depend on whether the round ran before.
    """
    prior = ledger[ledger["round_id"] < round_id]
    voted = prior[prior["event"].isin(VOTES)]
    seen = set(zip(voted["item_id"], schema.get_annotator_key(voted), strict=True))
    accepted = schema.conform(accepted, schema.ACCEPTED)
    kinds = [
        SKIP if pd.isna(label) else "relabel" if (item, who) in seen else "label"
        for item, who, label in zip(
            accepted["item_id"],
            schema.get_annotator_key(accepted),
            accepted["label"],
            strict=True,
        )
    ]
    votes = accepted.assign(event=kinds, outcome="accepted", detail="")
    rejected = schema.conform(rejected, schema.QUARANTINED)
    refusals = rejected.assign(
        event="rejected", outcome=rejected["reason_code"], detail=rejected["reason"]
    )
    return pd.concat([votes, refusals], ignore_index=True).assign(round_id=round_id)


def get_votes(events: pd.DataFrame) -> pd.DataFrame:
    """Each annotator's latest vote per item, with its position in event order; skips are
    not votes. An annotator (:func:`tasks.schema.get_annotator_key`) is named by the latest
    name his votes carry."""
    voted = events[events["event"].isin(VOTES)].reset_index(drop=True)
    voted = voted.assign(order=np.arange(len(voted)))
    who = schema.get_annotator_key(voted)
    voted["annotator"] = voted["annotator"].groupby(who).transform("last")
    return voted.groupby(["item_id", "annotator"], sort=False).tail(1)


def get_majority_labels(votes: pd.DataFrame) -> pd.DataFrame:
    """``item_id, label``: most votes, a tie to the class whose latest vote is most recent."""
    tally = (
        votes.groupby(["item_id", "label"])
        .agg(count=("order", "size"), latest=("order", "max"))
        .reset_index()
        .sort_values(["item_id", "count", "latest"], ascending=[True, False, False])
    )
    return tally.drop_duplicates("item_id")[["item_id", "label"]].reset_index(drop=True)


def get_vote_agreement(
    votes: pd.DataFrame, predicted: pd.Series, *, classes: tuple[str, ...]
) -> tuple[float, float]:
    """How often an annotator, and how often the model, agree with the other annotators.

    For each vote on an item with several votes, the reference is the strict majority of the
    item's *other* votes (votes whose others tie are left out). The annotators' agreement is
    the share of votes equal to their reference; the model's is the share of the same
    references that its prediction for the item equals. Both are measured against the same
    noisy references, so the model is the better voter exactly when its agreement is higher.

    Parameters
    ----------
    votes : pd.DataFrame
        ``item_id, label``: one row per counted vote (labels among ``classes``).
    predicted : pd.Series of str
        The model's class for each item (index ``item_id``), at least those with 2+ votes.

    Returns
    -------
    (float, float)
        Agreement of the annotators and of the model, each in [0, 1]; NaN for both when no
        vote has a strict majority among the others.
    """
    index = {name: code for code, name in enumerate(classes)}
    unknown = sorted(set(votes["label"].astype(str)) - index.keys())
    if unknown:
        raise ValueError(f"votes for {unknown[:5]}, not among the classes {list(classes)}")
    several = votes[votes.groupby("item_id")["item_id"].transform("size") >= 2]
    items, item_codes = np.unique(several["item_id"].astype(str).to_numpy(), return_inverse=True)
    labels = several["label"].map(index).to_numpy(dtype=int)
    counts = np.zeros((items.size, len(classes)), dtype=int)
    np.add.at(counts, (item_codes, labels), 1)
    others = counts[item_codes]
    others[np.arange(labels.size), labels] -= 1
    top = others.max(axis=1, initial=0)
    strict = (top >= 1) & ((others == top[:, None]).sum(axis=1) == 1)
    if not strict.any():
        return float("nan"), float("nan")
    reference = others.argmax(axis=1)[strict]
    model = predicted.astype(str).reindex(items).map(index).to_numpy()[item_codes][strict]
    return float(np.mean(labels[strict] == reference)), float(np.mean(model == reference))


@dataclass(frozen=True)
class Consensus:
    labels: pd.DataFrame  # item_id, label, method
    annotators: pd.DataFrame  # annotator, n_labels, agreement, quality
    method: str  # "majority" or "crowdlab"
    why: str


def _use_crowdlab(votes: pd.DataFrame, train_ids: set[str], params: MergeParams) -> str:
    """Why CROWDLAB cannot be used here ('' when it can)."""
    if params.consensus == "majority":
        return "merge.consensus is majority"
    train_votes = votes[votes["item_id"].isin(train_ids)]
    per_item = train_votes.groupby("item_id").size()
    multi = int((per_item >= 2).sum())
    if multi < params.crowdlab_min_items:
        return f"{multi} training items have several votes, fewer than merge.crowdlab_min_items"
    if len(_get_learnable_classes(train_votes, params)) < 2:
        return (
            f"fewer than two classes have merge.cv_folds={params.cv_folds} training items: "
            "no out-of-fold probabilities"
        )
    return ""


def _get_learnable_classes(train_votes: pd.DataFrame, params: MergeParams) -> set[str]:
    """The classes whose training items (by majority vote) are enough for every fold of the
    out-of-fold model: CROWDLAB weighs the items of the others, too few to learn, by their
    votes' majority alone."""
    counts = get_majority_labels(train_votes)["label"].value_counts()
    return set(counts.index[counts >= params.cv_folds])


def _model_is_better(votes: pd.DataFrame, predicted: pd.Series, classes: tuple[str, ...]) -> bool:
    """Whether the model agrees with the annotators more often than they agree with each
    other (:func:`get_vote_agreement`); False when that cannot be told."""
    annotators, model = get_vote_agreement(votes, predicted, classes=classes)
    return bool(model > annotators)


def get_strict_majority(votes: pd.DataFrame) -> pd.Series:
    """Per item (index ``item_id``): whether one class has two or more votes and more votes
    than any other class."""
    counts = votes.groupby(["item_id", "label"]).size().unstack(fill_value=0)
    matrix = counts.to_numpy()
    top = matrix.max(axis=1, initial=0)
    strict = (top >= 2) & ((matrix == top[:, None]).sum(axis=1) == 1)
    return pd.Series(strict, index=counts.index)


def resolve_labels(
    votes: pd.DataFrame,
    split: pd.Series,
    features: pd.DataFrame | None,
    *,
    classes: tuple[str, ...],
    params: MergeParams,
    train_params: TrainParams,
    random_state: int,
    space: FeatureSpace | None = None,
    label_sets: LabelSets | None = None,
) -> Consensus:
    """The current label of every voted item.

    Parameters
    ----------
    votes : pd.DataFrame
        From :func:`get_votes`: ``item_id, annotator, label, order``.
    split : pd.Series
        ``train``/``test`` by ``item_id``.
    features : pd.DataFrame or None
        Pool rows of the training items (for CROWDLAB's model); None means majority only.
    space : FeatureSpace, optional
        The round's feature space the model sees the rows in (default: tabular).
    label_sets : LabelSets, optional
        In a multilabel project: votes are sets, resolved label by label
        (:func:`tasks.multilabel.get_label_set_majority`); CROWDLAB is for one class per item.
    """
    if label_sets is not None:
        majority = get_label_set_majority(votes, classes, separator=label_sets.separator)
        majority = majority.assign(method="majority")
        why = "label sets: the majority of the votes, label by label"
    else:
        majority = get_majority_labels(votes).assign(method="majority")
    train_ids = set(split.index[split == "train"])
    if label_sets is None:
        why = "no features given" if features is None else _use_crowdlab(votes, train_ids, params)
    labels = majority
    quality = pd.Series(dtype=float)
    method = "majority"
    if not why:
        train_votes = votes[votes["item_id"].isin(train_ids)]
        # the items of a class with fewer training items than folds keep their majority
        learnable = _get_learnable_classes(train_votes, params)
        seed_of = majority.set_index("item_id")["label"]
        train_votes = train_votes[train_votes["item_id"].map(seed_of).isin(learnable)]
        matrix = train_votes.pivot(index="item_id", columns="annotator", values="label")
        items = matrix.index
        codes = matrix.apply(lambda col: col.map({c: i for i, c in enumerate(classes)}))
        seed = majority.set_index("item_id").loc[items, "label"]
        present = np.unique(encode_labels(seed, classes))
        compact = pd.Series(np.searchsorted(present, encode_labels(seed, classes)), index=items)
        rows = features.set_index("item_id").loc[items].reset_index()
        space = space or FeatureSpace()
        probs_compact = get_out_of_fold_pred_probs(
            space.transform(rows),
            compact.to_numpy(),
            n_classes=present.size,
            n_folds=params.cv_folds,
            # CROWDLAB weighs the model's P(label | x) against the votes: class weights would
            # tilt it to the rare classes (Abt-Buy, 12% matches: the balanced model is right
            # on 0.827 of the items, the unweighted one on 0.916; consensus 0.913 -> 0.917)
            train_params=train_params.model_copy(update={"class_weight": "none"}),
            random_state=random_state,
            categorical=space.categorical,
        )
        pred_probs = np.full((len(items), len(classes)), 1e-6)
        pred_probs[:, present] = probs_compact
        pred_probs /= pred_probs.sum(axis=1, keepdims=True)
        result = get_label_quality_multiannotator(
            codes.astype(float).reset_index(drop=True), pred_probs, verbose=False
        )
        consensus = pd.Series(
            np.asarray(classes, dtype=object)[result["label_quality"]["consensus_label"]],
            index=items,
        )
        multi = train_votes.groupby("item_id").size()
        # a single vote is not overruled here: questioning it is the flag stage's job
        several = consensus[multi.loc[items] >= 2]
        predicted = pd.Series(np.asarray(classes, dtype=object)[pred_probs.argmax(axis=1)], items)
        if params.consensus == "auto" and not _model_is_better(train_votes, predicted, classes):
            # a model weaker than the annotators does not overrule a strict majority of their
            # votes; it still settles ties, with the annotators weighed by their estimated
            # quality (bench/crowd.py: CROWDLAB as it comes fell below majority on crowds with
            # a weak model, this never did)
            seed_label = seed.loc[several.index]
            strict = get_strict_majority(train_votes).loc[several.index].to_numpy()
            several = several[~(strict & (several != seed_label).to_numpy())]
        labels = majority.set_index("item_id")
        labels.loc[several.index, "label"] = several
        labels.loc[several.index, "method"] = "crowdlab"
        labels = labels.reset_index()
        stats = result["annotator_stats"]
        quality = pd.Series(stats["annotator_quality"].to_numpy(), index=stats.index.astype(str))
        method = "crowdlab"
    agree = votes.merge(labels[["item_id", "label"]], on="item_id", suffixes=("", "_consensus"))
    agree = agree.assign(agrees=agree["label"] == agree["label_consensus"])
    annotators = (
        agree.groupby("annotator")
        .agg(n_labels=("agrees", "size"), agreement=("agrees", "mean"))
        .reset_index()
    )
    annotators["quality"] = annotators["annotator"].map(quality).astype(float)
    return Consensus(labels.reset_index(drop=True), annotators, method, why)


def get_current_labels(
    votes: pd.DataFrame, consensus: pd.DataFrame, split: pd.Series, last_round: pd.Series
) -> pd.DataFrame:
    """The current-label table: label, split as issued, number of votes, agreement."""
    merged = votes.merge(consensus[["item_id", "label"]], on="item_id", suffixes=("", "_c"))
    agrees = (merged["label"] == merged["label_c"]).groupby(merged["item_id"])
    current = consensus.set_index("item_id")
    current["n_votes"] = agrees.size()
    current["agreement"] = agrees.sum() / current["n_votes"]
    current["split"] = split.reindex(current.index).to_numpy()
    current["last_round"] = last_round.reindex(current.index).to_numpy()
    missing = current["split"].isna()
    if missing.any():
        raise ValueError(f"labeled items {list(current.index[missing][:5])} were never issued")
    return schema.conform(current.reset_index().sort_values("item_id"), schema.CURRENT)


def get_resolution_events(
    prior: pd.DataFrame,
    flags: pd.DataFrame,
    new_votes: pd.DataFrame,
    current: pd.DataFrame,
    *,
    round_id: int,
) -> pd.DataFrame:
    """``resolved`` events: earlier flags answered by a new vote this round, and
    ``consensus`` events: items whose resolved label is new or changed this round."""
    label_now = current.set_index("item_id")["label"]
    resolved_before = set(prior.loc[prior["event"] == "resolved", "item_id"])
    open_flags = flags[(flags["round_id"] < round_id) & ~flags["item_id"].isin(resolved_before)]
    open_flags = open_flags.drop_duplicates("item_id", keep="last")
    answered = open_flags[open_flags["item_id"].isin(set(new_votes["item_id"]))]
    kept = answered["given_label"].to_numpy() == answered["item_id"].map(label_now).to_numpy()
    resolved = pd.DataFrame(
        {
            "item_id": answered["item_id"].to_numpy(),
            "label": answered["item_id"].map(label_now).to_numpy(),
            "outcome": np.where(kept, "confirmed", "changed"),
            "detail": [
                f"flagged in round {r}: label {g!r} " + ("confirmed" if k else f"changed to {n!r}")
                for r, g, k, n in zip(
                    answered["round_id"],
                    answered["given_label"],
                    kept,
                    answered["item_id"].map(label_now),
                    strict=True,
                )
            ],
        }
    )
    last = prior[prior["event"] == "consensus"].drop_duplicates("item_id", keep="last")
    before = last.set_index("item_id")["label"]
    was = current["item_id"].map(before)
    changed = current[was.isna() | (was != current["label"])]
    was = changed["item_id"].map(before)
    consensus = pd.DataFrame(
        {
            "item_id": changed["item_id"].to_numpy(),
            "label": changed["label"].to_numpy(),
            "outcome": np.where(was.isna(), "first", "changed"),
            "detail": [
                (f"{w!r} -> {lab!r}" if isinstance(w, str) else f"-> {lab!r}")
                + f" ({n} vote{'' if n == 1 else 's'}, agreement {a:.2f})"
                for w, lab, n, a in zip(
                    was, changed["label"], changed["n_votes"], changed["agreement"], strict=True
                )
            ],
        }
    )
    return pd.concat(
        [resolved.assign(event="resolved"), consensus.assign(event="consensus")],
        ignore_index=True,
    ).assign(round_id=round_id)


def get_first_split(issued: pd.DataFrame) -> pd.Series:
    """``train``/``test`` by ``item_id``: the split each item was first issued with (an item
    keeps it for good, so a test item never becomes a training item)."""
    first = issued.sort_values("round_id", kind="stable").drop_duplicates("item_id")
    return first.set_index("item_id")["split"]


@dataclass(frozen=True)
class RoundVotes:
    """The round's new events and every vote that counts, before consensus."""

    events: pd.DataFrame  # this round's label, relabel, skip and rejected events
    votes: pd.DataFrame  # each annotator's latest vote per item, for a known class
    pending: pd.Series  # votes for classes not (yet) in project.classes, by label
    split: pd.Series  # train/test by item_id

    @property
    def train_ids(self) -> pd.Series:
        """Items with a vote that were issued as training items."""
        votes = self.votes
        return votes.loc[votes["item_id"].map(self.split) == "train", "item_id"].drop_duplicates()


def get_round_votes(
    prior: pd.DataFrame,
    accepted: pd.DataFrame,
    rejected: pd.DataFrame,
    issued: pd.DataFrame,
    *,
    round_id: int,
    classes: tuple[str, ...],
    label_sets: LabelSets | None = None,
) -> RoundVotes:
    """Votes of earlier rounds (``prior``: their active ledger events) plus this round's.

    Votes for a class not in ``classes`` wait in the ledger (counted in ``pending``) until the
    class is added to the project: they do not count towards any consensus meanwhile. With
    ``label_sets`` (a multilabel project) a vote is a set, known when all its labels are.
    """
    events = get_label_events(prior, accepted, rejected, round_id=round_id)
    every_vote = get_votes(pd.concat([prior, events.reindex(columns=prior.columns)]))
    known = (
        pd.Series(
            is_known_set(every_vote["label"], classes, separator=label_sets.separator),
            index=every_vote.index,
        )
        if label_sets is not None
        else every_vote["label"].isin(classes)
    )
    pending = every_vote.loc[~known, "label"].value_counts()
    return RoundVotes(events, every_vote[known], pending, get_first_split(issued))


@dataclass(frozen=True)
class Merge:
    current: pd.DataFrame  # schema CURRENT
    events: pd.DataFrame  # schema LEDGER: the round's events, numbered
    annotators: pd.DataFrame  # schema ANNOTATORS: this round's statistics
    summary: MergeSummary


def merge_round(
    round_votes: RoundVotes,
    features: pd.DataFrame | None,
    *,
    prior: pd.DataFrame,
    flags: pd.DataFrame,
    round_id: int,
    classes: tuple[str, ...],
    params: MergeParams,
    train_params: TrainParams,
    random_state: int,
    space: FeatureSpace | None = None,
    label_sets: LabelSets | None = None,
) -> Merge:
    """Resolve every item's label from its votes and record the round's events.

    ``features``: pool rows of ``round_votes.train_ids`` for CROWDLAB's model (seen in
    ``space``, default tabular), or None for majority only; ``prior``: the active ledger
    events of earlier rounds; ``flags``: the flags of earlier rounds.
    """
    votes, split = round_votes.votes, round_votes.split
    consensus = resolve_labels(
        votes,
        split,
        features,
        classes=classes,
        params=params,
        train_params=train_params,
        random_state=random_state,
        space=space,
        label_sets=label_sets,
    )
    last_round = votes.groupby("item_id")["round_id"].max()
    current = (
        get_current_labels(votes, consensus.labels, split, last_round)
        if len(votes)
        else schema.empty(schema.CURRENT)
    )
    round_events = round_votes.events
    more = get_resolution_events(
        prior,
        flags,
        round_events[round_events["event"].isin(VOTES)],
        current,
        round_id=round_id,
    )
    events = schema.number_events(
        pd.concat([round_events, more], ignore_index=True), round_id=round_id
    )
    stats = consensus.annotators.assign(round_id=round_id, method=consensus.method)
    kinds = events["event"].value_counts()
    summary = MergeSummary(
        events_label=int(kinds.get("label", 0)),
        events_relabel=int(kinds.get("relabel", 0)),
        events_skip=int(kinds.get(SKIP, 0)),
        events_rejected=int(kinds.get("rejected", 0)),
        events_resolved=int(kinds.get("resolved", 0)),
        events_consensus=int(kinds.get("consensus", 0)),
        consensus_method=consensus.method,
        crowdlab_not_used_because=consensus.why,
        labeled_items=int(len(current)),
        train_items=int((current["split"] == "train").sum()),
        test_items=int((current["split"] == "test").sum()),
        items_in_disagreement=int((current["agreement"] < 1.0).sum()),
        annotators=int(len(stats)),
        votes_for_new_classes={str(k): int(v) for k, v in round_votes.pending.items()},
    )
    return Merge(current, events, schema.conform(stats, schema.ANNOTATORS), summary)


def run(ctx: StageContext) -> MergeSummary:
    p = ctx.params
    # events of rounds a rollback undid stay in the ledger but no longer count
    prior = get_active_events(ctx.load_before("ledger"))
    round_votes = get_round_votes(
        prior,
        ctx.load("accepted"),
        ctx.load("rejected"),
        ctx.load_before("issued"),
        round_id=ctx.round_id,
        classes=p.project.classes,
        label_sets=get_label_sets(p),
    )
    features = (
        ctx.pool_rows(round_votes.train_ids, ordered=False)
        if p.merge.consensus != "majority" and p.project.task == "multiclass"
        else None
    )
    merged = merge_round(
        round_votes,
        features,
        prior=prior,
        flags=ctx.load_before("flags"),
        round_id=ctx.round_id,
        classes=p.project.classes,
        params=p.merge,
        train_params=p.train,
        random_state=ctx.random_state("merge"),
        space=load_space(ctx),
        label_sets=get_label_sets(p),
    )
    ctx.save("current", merged.current)
    crash_point("during:merge")
    ctx.save("events", merged.events)
    history = ctx.load_before("annotators")
    ctx.save("annotators", pd.concat([history, merged.annotators], ignore_index=True))
    ctx.save("merge_report", merged.summary.to_dict())
    return merged.summary
