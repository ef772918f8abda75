"""Drift on arriving items (tasks/drift.py): known answers on small seeded frames.

No drift on random splits; a covariate, a prior and a sub-population shift caught, with the
responsible feature named; PSI, categorical and NaN columns, the prediction test, the errors,
no mutation, determinism.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tasks.drift import DriftResult, find_drift, get_psi, get_psi_noise_level
from tasks.params import HealthParams

PARAMS = HealthParams()


def _frame(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Four numeric features (one with NaN) and a categorical one, as get_feature_frame
    gives them."""
    with_nan = rng.normal(size=n)
    with_nan[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.exponential(size=n),
            "x3": rng.integers(0, 5, size=n).astype(float),
            "x4": with_nan,
            "colour": pd.Categorical(
                rng.choice(["red", "green", "blue"], size=n, p=[0.5, 0.3, 0.2])
            ),
        }
    )


def _split(frame: pd.DataFrame, n_new: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(frame))
    return frame.iloc[order[n_new:]], frame.iloc[order[:n_new]]


def _labelled(n: int, rng: np.random.Generator, *, positive_share: float) -> pd.DataFrame:
    """A feature ``signal`` whose distribution depends on the label (mean 0 or 1.5), three
    that do not."""
    label = rng.random(n) < positive_share
    return pd.DataFrame(
        {
            "signal": rng.normal(size=n) + 1.5 * label,
            "noise_a": rng.normal(size=n),
            "noise_b": rng.uniform(size=n),
            "noise_c": rng.normal(size=n),
        }
    )


# -- no drift --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_a_random_split_raises_no_warning(seed):
    reference, arriving = _split(_frame(2500, np.random.default_rng(seed)), 500, seed)
    result = find_drift(reference, arriving, params=PARAMS, random_state=seed)
    assert not result.warning, result.reasons
    assert result.shifted_features == () and result.classifier_features == ()
    assert 0.4 < result.auc < 0.6 and result.p_value > PARAMS.drift_alpha
    assert result.reasons[0].startswith("no drift warning")
    assert (result.n_reference, result.n_new) == (2000, 500)


@pytest.mark.parametrize("seed", range(3))
def test_a_small_random_arrival_raises_no_warning(seed):
    # 50 items: PSI alone is above 0.2 on most features of such a sample; the noise-aware
    # threshold keeps it quiet
    reference, arriving = _split(_frame(3050, np.random.default_rng(seed)), 50, seed)
    result = find_drift(reference, arriving, params=PARAMS, random_state=seed)
    assert not result.warning, result.reasons
    assert (result.features["psi_threshold"] > PARAMS.drift_psi_alert).all()


# -- known shifts ----------------------------------------------------------------------------
def test_a_covariate_shift_is_caught_and_named():
    rng = np.random.default_rng(1)
    reference, arriving = _frame(2000, rng), _frame(500, rng)
    arriving = arriving.assign(x1=arriving["x1"] + 0.5)
    result = find_drift(reference, arriving, params=PARAMS, random_state=0)
    assert result.warning
    assert result.shifted_features == ("x1",)
    assert result.classifier_features[0] == "x1"
    assert result.auc > 0.55 and result.p_value < 1e-6
    assert any("x1" in reason and "1 of 5 features shifted" in reason for reason in result.reasons)


def test_a_prior_shift_is_caught_and_the_label_dependent_feature_named():
    rng = np.random.default_rng(2)
    reference = _labelled(3000, rng, positive_share=0.2)
    arriving = _labelled(500, rng, positive_share=0.7)
    result = find_drift(reference, arriving, params=PARAMS, random_state=0)
    assert result.warning
    assert result.shifted_features == ("signal",)
    assert result.classifier_features[0] == "signal"


def test_a_sub_population_shift_is_caught():
    # four clusters in (u, v); the new items come from one of them only
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [0.0, 3.0], [3.0, 0.0], [3.0, 3.0]])

    def draw(n: int, clusters: list[int]) -> pd.DataFrame:
        points = centres[rng.choice(clusters, size=n)] + rng.normal(size=(n, 2))
        return pd.DataFrame(
            {"u": points[:, 0], "v": points[:, 1], "w": rng.normal(size=n), "z": rng.normal(size=n)}
        )

    reference, arriving = draw(3000, [0, 1, 2, 3]), draw(300, [3])
    result = find_drift(reference, arriving, params=PARAMS, random_state=0)
    assert result.warning and result.auc > 0.7
    assert set(result.shifted_features) == {"u", "v"}
    assert set(result.classifier_features) == {"u", "v"}


def test_a_shift_seen_only_jointly_is_caught_by_the_classifier():
    # u and v keep their marginals, but the new items have v = u (the reference: independent)
    rng = np.random.default_rng(4)
    n_ref, n_new = 3000, 500
    reference = pd.DataFrame({"u": rng.normal(size=n_ref), "v": rng.normal(size=n_ref)})
    u = rng.normal(size=n_new)
    arriving = pd.DataFrame({"u": u, "v": u + 0.1 * rng.normal(size=n_new)})
    result = find_drift(reference, arriving, params=PARAMS, random_state=0)
    assert result.shifted_features == ()
    assert result.warning and result.auc > 0.6
    assert set(result.classifier_features) == {"u", "v"}


def test_a_significant_but_tiny_shift_of_a_large_arrival_is_not_a_warning():
    # 0.08 standard deviations on 15,000 items: the KS test rejects, but 3% of the items
    # moved, under the 5% that counts; the classifier's AUC is about 0.52
    rng = np.random.default_rng(21)
    reference = pd.DataFrame({"x": rng.normal(size=15_000), "y": rng.normal(size=15_000)})
    arriving = pd.DataFrame({"x": rng.normal(size=15_000) + 0.08, "y": rng.normal(size=15_000)})
    result = find_drift(reference, arriving, params=PARAMS, random_state=0)
    row = result.features.set_index("feature").loc["x"]
    assert row["p_value"] < PARAMS.drift_alpha / 2 and row["distance"] < 0.05
    assert not result.warning, result.reasons


# -- PSI ---------------------------------------------------------------------------------------
def test_psi_of_identical_distributions_is_about_zero():
    rng = np.random.default_rng(5)
    values = pd.Series(rng.normal(size=5000))
    assert get_psi(values, values) == pytest.approx(0.0, abs=1e-12)
    assert get_psi(values, pd.Series(rng.normal(size=5000))) < 0.01
    colours = pd.Series(pd.Categorical(rng.choice(["a", "b", "c"], size=5000)))
    assert get_psi(colours, colours) == pytest.approx(0.0, abs=1e-12)


def test_psi_grows_with_the_shift():
    rng = np.random.default_rng(6)
    base = pd.Series(rng.normal(size=5000))
    psis = [get_psi(base, pd.Series(rng.normal(size=5000) + shift)) for shift in (0.2, 0.5, 1.0)]
    assert psis == sorted(psis) and psis[-1] > 0.5


def test_psi_noise_level_shrinks_with_the_samples():
    small = get_psi_noise_level(10, 10_000, 50, alpha=0.001)
    large = get_psi_noise_level(10, 10_000, 2000, alpha=0.001)
    assert small > 0.5 > 0.05 > large > 0
    assert get_psi_noise_level(1, 100, 100, alpha=0.01) == 0.0


# -- column kinds and NaN ----------------------------------------------------------------------
def test_a_categorical_shift_is_tested_by_chi_square():
    rng = np.random.default_rng(7)
    reference, arriving = _frame(2000, rng), _frame(500, rng)
    arriving = arriving.assign(
        colour=pd.Categorical(rng.choice(["red", "green", "blue"], size=500, p=[0.2, 0.3, 0.5]))
    )
    result = find_drift(reference, arriving, params=PARAMS, random_state=0)
    row = result.features.set_index("feature").loc["colour"]
    assert (row["kind"], row["test"]) == ("categorical", "chi2")
    assert np.isnan(row["ks_statistic"]) and np.isnan(row["ks_p_value"])
    assert row["shifted"] and row["p_value"] < 1e-6 and row["psi"] > 0.2
    assert row["distance"] == pytest.approx(0.3, abs=0.06)  # total variation of the shares
    assert result.shifted_features == ("colour",)
    assert "colour" in result.classifier_features


def test_categories_unseen_by_the_reference_are_handled():
    rng = np.random.default_rng(8)
    reference, arriving = _frame(2000, rng), _frame(500, rng)
    colours = np.where(rng.random(500) < 0.3, "purple", arriving["colour"].astype(str))
    # other categories, in another order, than the reference's
    arriving = arriving.assign(colour=pd.Categorical(colours, categories=sorted(set(colours))))
    result = find_drift(reference, arriving, params=PARAMS, random_state=0)
    assert result.shifted_features == ("colour",)
    assert result.classifier_features[0] == "colour"


def test_nan_is_handled_and_a_rise_in_missing_values_is_a_shift():
    rng = np.random.default_rng(9)
    reference, arriving = _split(_frame(2500, rng), 500, 0)
    assert not find_drift(reference, arriving, params=PARAMS, random_state=0).warning
    x4 = arriving["x4"].to_numpy().copy()
    x4[rng.random(500) < 0.3] = np.nan
    colour = arriving["colour"].copy()
    colour.iloc[:20] = np.nan
    result = find_drift(
        reference, arriving.assign(x4=x4, colour=colour), params=PARAMS, random_state=0
    )
    assert "x4" in result.shifted_features and result.warning


def test_boolean_and_integer_columns_are_numeric():
    rng = np.random.default_rng(10)
    frame = pd.DataFrame({"flag": rng.random(1000) < 0.3, "count": rng.integers(0, 9, 1000)})
    result = find_drift(frame.iloc[:800], frame.iloc[800:], params=PARAMS, random_state=0)
    assert result.features["kind"].tolist() == ["numeric", "numeric"]
    assert not result.warning


# -- the champion's predictions ----------------------------------------------------------------
def _probs(n: int, rng: np.random.Generator, concentration: list[float]) -> np.ndarray:
    return rng.dirichlet(concentration, size=n)


def test_a_prediction_shift_is_detected_when_probabilities_differ():
    rng = np.random.default_rng(11)
    reference, arriving = _split(_frame(2500, rng), 500, 0)
    ref_probs = _probs(2000, rng, [1.0, 1.0, 1.0])
    same = find_drift(
        reference,
        arriving,
        params=PARAMS,
        random_state=0,
        reference_probs=ref_probs,
        arriving_probs=_probs(500, rng, [1.0, 1.0, 1.0]),
    )
    assert same.prediction_shift is False and same.prediction_p_value > PARAMS.drift_alpha
    moved = find_drift(
        reference,
        arriving,
        params=PARAMS,
        random_state=0,
        reference_probs=ref_probs,
        arriving_probs=_probs(500, rng, [3.0, 1.0, 1.0]),
    )
    assert moved.prediction_shift is True and moved.prediction_ks > 0.2
    assert any("predicted probabilities shifted" in reason for reason in moved.reasons)


def test_two_class_probabilities_are_tested_once():
    rng = np.random.default_rng(12)
    reference, arriving = _split(_frame(2500, rng), 500, 0)
    ref_p = rng.beta(2, 2, size=2000)
    new_p = rng.beta(4, 2, size=500)
    result = find_drift(
        reference,
        arriving,
        params=PARAMS,
        random_state=0,
        reference_probs=np.column_stack([1 - ref_p, ref_p]),
        arriving_probs=np.column_stack([1 - new_p, new_p]),
    )
    assert result.prediction_shift is True and result.prediction_p_value < 1e-6


def test_no_probabilities_no_prediction_test():
    reference, arriving = _split(_frame(1000, np.random.default_rng(13)), 200, 0)
    result = find_drift(reference, arriving, params=PARAMS, random_state=0)
    assert (result.prediction_ks, result.prediction_p_value, result.prediction_shift) == (
        None,
        None,
        None,
    )


# -- errors --------------------------------------------------------------------------------------
def test_mismatched_columns_are_named():
    reference, arriving = _split(_frame(1000, np.random.default_rng(14)), 200, 0)
    arriving = arriving.drop(columns=["x2"]).assign(extra=1.0)
    with pytest.raises(ValueError, match=r"arriving lacks \['x2'\] and has \['extra'\]"):
        find_drift(reference, arriving, params=PARAMS, random_state=0)


def test_a_column_of_another_kind_is_named():
    reference, arriving = _split(_frame(1000, np.random.default_rng(15)), 200, 0)
    arriving = arriving.assign(x3=arriving["x3"].astype("category"))
    with pytest.raises(ValueError, match=r"columns \['x3'\] are numeric on one side"):
        find_drift(reference, arriving, params=PARAMS, random_state=0)


def test_too_few_items_is_an_error_naming_the_param():
    reference, arriving = _split(_frame(1000, np.random.default_rng(16)), 49, 0)
    with pytest.raises(ValueError, match=r"arriving has 49 rows.*drift_min_items=50"):
        find_drift(reference, arriving, params=PARAMS, random_state=0)


def test_probabilities_must_match_the_frames():
    rng = np.random.default_rng(17)
    reference, arriving = _split(_frame(1000, rng), 200, 0)
    with pytest.raises(ValueError, match="go together, got only reference_probs"):
        find_drift(
            reference,
            arriving,
            params=PARAMS,
            random_state=0,
            reference_probs=_probs(800, rng, [1, 1]),
        )
    with pytest.raises(ValueError, match=r"arriving_probs must have shape \(200, n_classes"):
        find_drift(
            reference,
            arriving,
            params=PARAMS,
            random_state=0,
            reference_probs=_probs(800, rng, [1, 1]),
            arriving_probs=_probs(199, rng, [1, 1]),
        )


# -- contract: no mutation, determinism, JSON, subsampling --------------------------------------
def test_inputs_are_not_mutated_and_the_result_is_deterministic():
    rng = np.random.default_rng(18)
    reference, arriving = _split(_frame(1500, rng), 300, 0)
    arriving = arriving[list(reversed(arriving.columns))]  # another column order is fine
    ref_probs, new_probs = _probs(1200, rng, [1, 1, 1]), _probs(300, rng, [1, 1, 1])
    copies = [reference.copy(), arriving.copy(), ref_probs.copy(), new_probs.copy()]
    kwargs = {"params": PARAMS, "reference_probs": ref_probs, "arriving_probs": new_probs}
    first = find_drift(reference, arriving, random_state=3, **kwargs)
    second = find_drift(reference, arriving, random_state=3, **kwargs)
    pd.testing.assert_frame_equal(reference, copies[0])
    pd.testing.assert_frame_equal(arriving, copies[1])
    np.testing.assert_array_equal(ref_probs, copies[2])
    np.testing.assert_array_equal(new_probs, copies[3])
    assert first.to_dict() == second.to_dict()
    assert first.features["feature"].tolist() == list(reference.columns)


def test_to_dict_is_json():
    reference, arriving = _split(_frame(1000, np.random.default_rng(19)), 200, 0)
    result = find_drift(reference, arriving, params=PARAMS, random_state=0)
    assert isinstance(result, DriftResult)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert len(data["features"]) == 5
    assert data["features"][0]["chi2_statistic"] is None  # NaN as null
    assert data["features"][4]["kind"] == "categorical"


def test_a_large_reference_is_subsampled():
    params = HealthParams(drift_reference_sample=500)
    reference, arriving = _split(_frame(2200, np.random.default_rng(20)), 200, 0)
    rng = np.random.default_rng(21)
    result = find_drift(
        reference,
        arriving,
        params=params,
        random_state=0,
        reference_probs=_probs(2000, rng, [1, 1]),
        arriving_probs=_probs(200, rng, [1, 1]),
    )
    assert (result.n_reference, result.n_new) == (500, 200)
