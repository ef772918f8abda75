"""``alloop status`` leads with the model rating and the stop advice, then drift warnings."""

from __future__ import annotations

from flows.status import get_drift_lines, get_rating_line
from tasks.params import StopParams
from tasks.summaries import HealthSummary

RATED = HealthSummary(
    round_id=5,
    rating=72.4,
    balance=55.0,
    coverage=80.0,
    all_labels=85.0,
    worst_labels=40.0,
    worst_classes={"sleep-stage-1": 0.4},
    kappa=0.93,
    kappa_mean=0.91,
    stop_reason="kappa averaged 0.9100 over the last 3 rounds (< 0.99)",
)


def test_the_first_line_gives_the_rating_its_factors_and_the_stop_advice():
    assert get_rating_line(RATED, StopParams(kappa=0.99)) == (
        "model rating 72/100 (balance 55, coverage 80, all labels 85, worst labels 40: "
        "'sleep-stage-1'); stop: go on (kappa 0.93, 3-round mean 0.91 < 0.99)"
    )


def test_stop_advised_and_the_threshold_reached():
    health = HealthSummary(
        round_id=9, rating=90.0, kappa=0.995, kappa_mean=0.992, stop_advised=True
    )
    line = get_rating_line(health, StopParams(kappa=0.99, window=4))
    assert line.endswith("stop: advised (kappa 0.99, 4-round mean 0.99 >= 0.99)")


def test_what_is_not_there_yet_is_said():
    assert get_rating_line(None, None).startswith("model rating: none yet")
    unrated = HealthSummary(round_id=1, not_rated_because="no model trained this round")
    line = get_rating_line(unrated, StopParams())
    assert "not rated (no model trained this round)" in line and "stop: no signal yet" in line
    early = HealthSummary(
        round_id=3, rating=60.0, kappa=0.88, stop_reason="2 of the 3 rounds the signal averages"
    )
    assert "go on (kappa 0.88, 3-round mean not yet: 2 of the 3 rounds" in get_rating_line(
        early, StopParams()
    )
    # a factor not computed is a dash, and params.yaml unreadable leaves out the threshold
    assert "balance -" in get_rating_line(early, None)
    assert "mean 0.91)" in get_rating_line(RATED, None)


def test_drift_warning_lines():
    assert get_drift_lines(None) == [] and get_drift_lines(RATED) == []
    drifted = HealthSummary(
        round_id=4,
        drift_new_items=120,
        drift_checked=True,
        drift_warning=True,
        drift_auc=0.71,
        drift_p_value=0.0012,
        drift_features=("x1", "x2"),
        drift_prediction_shift=True,
    )
    (line,) = get_drift_lines(drifted)
    assert line.startswith("drift warning: the 120 items that arrived differ from the pool")
    assert "AUC 0.71, p 0.0012" in line and "x1, x2" in line and "predictions shifted" in line
