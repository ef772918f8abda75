"""A simulated annotator: answers a batch from the true labels, with a share of mistakes.

Used by the demo and by simulations, so that they run the product's own stages with no human.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def answer_batch(
    item_ids: pd.Series,
    truth: pd.DataFrame,
    *,
    classes: Sequence[str],
    noise: float,
    annotator: str,
    labeled_at: str,
    random_state: int,
) -> pd.DataFrame:
    """The label file an annotator would send back for ``item_ids``.

    Parameters
    ----------
    truth : pd.DataFrame
        ``item_id`` and true ``label`` of at least every item asked.
    noise : float in [0, 1]
        Share of answers replaced by a uniformly chosen *other* class.

    Returns
    -------
    pd.DataFrame
        Columns ``item_id, label, annotator, labeled_at``: the plain incoming CSV format.
    """
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    known = truth.set_index("item_id")["label"]
    missing = sorted(set(item_ids) - set(known.index))
    if missing:
        raise ValueError(f"no true label for items {missing[:5]}")
    answers = known.loc[item_ids.to_numpy()].astype(str).to_numpy().copy()
    rng = np.random.default_rng(random_state)
    wrong = np.flatnonzero(rng.random(answers.size) < noise)
    names = np.asarray(classes, dtype=object)
    for position in wrong:
        others = names[names != answers[position]]
        answers[position] = others[rng.integers(others.size)]
    return pd.DataFrame(
        {
            "item_id": item_ids.to_numpy(),
            "label": answers,
            "annotator": annotator,
            "labeled_at": labeled_at,
        }
    )
