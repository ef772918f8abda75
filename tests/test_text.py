"""Text columns (issue 19): the feature space on small data with known answers, then a pool of
documents through real rounds (every stage, a pool added between rounds, a rerun, MLflow).

The documents are made here: each class has a handful of topic words, mixed into a background
of words every class shares, so the text alone tells the class and nothing else does."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import run_cli

from flows.demo import annotate_outbox
from flows.rerun import al_rerun
from flows.round import al_round
from flows.runtime import mlflow_uri
from flows.workspace import add_to_pool, init_workspace
from tasks.features import (
    FeatureSpace,
    detect_text_columns,
    fit_feature_space,
    get_feature_frame,
)
from tasks.model import fit_booster, predict_proba
from tasks.params import TextParams, TrainParams

TOPICS = {
    "grain": ["wheat", "corn", "harvest", "bushel", "crop", "farm", "export"],
    "oil": ["crude", "barrel", "opec", "refinery", "pipeline", "drilling", "price"],
    "money": ["bank", "rate", "interest", "dollar", "currency", "loan", "central"],
}
CLASSES = list(TOPICS)


def make_documents(n: int, *, seed: int, start: int = 0) -> pd.DataFrame:
    """``n`` news-like items: ``body`` (text), ``desk`` (a category), ``length`` (a number) and
    the true ``label``."""
    rng = np.random.default_rng(seed)
    background = [f"w{i}" for i in range(300)]
    labels = rng.choice(CLASSES, size=n, p=[0.5, 0.3, 0.2])
    bodies = []
    for label in labels:
        words = [*rng.choice(background, size=rng.integers(12, 40))]
        words += [*rng.choice(TOPICS[label], size=rng.integers(1, 4))]
        rng.shuffle(words)
        bodies.append(" ".join(words))
    return pd.DataFrame(
        {
            "item_id": [f"doc-{i:05d}" for i in range(start, start + n)],
            "body": bodies,
            "desk": rng.choice(["london", "new york", "tokyo"], size=n),
            "length": [float(len(b)) for b in bodies],
            "label": labels,
        }
    )


def _pool(n: int = 400, seed: int = 0) -> pd.DataFrame:
    docs = make_documents(n, seed=seed)
    docs["item_id"] = docs["item_id"].astype("string")
    docs["body"] = docs["body"].astype("string")
    docs["desk"] = docs["desk"].astype("string")
    return docs.drop(columns=["label"])


def _space(rows: pd.DataFrame, **settings) -> FeatureSpace:
    return fit_feature_space(
        rows,
        text_columns=("body",),
        params=TextParams(**settings),
        fingerprint="test",
        random_state=0,
    )


# -- the feature space ----------------------------------------------------------------------
def test_prose_is_detected_as_text_and_short_strings_stay_categories():
    found = detect_text_columns(_pool())
    assert list(found) == ["body"]  # "new york" is two words: a category
    assert found["body"] >= 13


def test_a_text_space_gives_sparse_tfidf_beside_the_numeric_and_category_columns():
    rows = _pool()
    space = _space(rows)
    features = space.transform(rows)
    assert sp.issparse(features) and features.shape == (len(rows), space.n_features)
    assert space.numeric == ("length",) and list(space.categories) == ["desk"]
    assert space.categorical == (1,)
    dense = features[:, :2].toarray()
    np.testing.assert_array_equal(dense[:, 0], rows["length"].to_numpy())
    assert set(np.unique(dense[:, 1])) <= {0.0, 1.0, 2.0}
    # TF-IDF rows are unit length; most of the matrix is empty
    tfidf = features[:, 2:]
    np.testing.assert_allclose(sp.linalg.norm(tfidf, axis=1), 1.0)
    assert tfidf.nnz < 0.2 * tfidf.shape[0] * tfidf.shape[1]


def test_words_and_categories_never_seen_when_fitted_are_ignored_not_errors():
    rows = _pool()
    space = _space(rows)
    new = pd.DataFrame(
        {
            "item_id": pd.Series(["x"], dtype="string"),
            "body": pd.Series(["zebra quokka wheat"], dtype="string"),
            "desk": pd.Series(["paris"], dtype="string"),
            "length": [np.nan],
        }
    )
    row = space.transform(new)
    assert row.shape == (1, space.n_features)
    values = row.toarray()[0]
    assert np.isnan(values[0]) and np.isnan(values[1])  # missing number, unknown category
    wheat = 2 + space.text[0].vocabulary.index("wheat")
    assert values[wheat] == pytest.approx(1.0)  # the one known word carries the whole row


def test_a_space_read_back_from_its_files_gives_the_same_features():
    rows = _pool()
    space = _space(rows)
    again = FeatureSpace.from_files(space.to_files())
    assert again.to_files() == space.to_files() and again.same_as(space)
    assert (space.transform(rows) != again.transform(rows)).nnz == 0
    np.testing.assert_array_equal(space.embed(rows), again.embed(rows))
    # and the vocabulary is the pool's, capped as the settings say
    capped = _space(rows, max_features=50)
    assert len(capped.text[0].vocabulary) == 50 and not capped.same_as(space)


def test_a_tabular_space_is_the_feature_frame_of_today():
    rows = _pool()
    tabular = FeatureSpace()
    assert tabular.to_files() == {} and FeatureSpace.from_files({}).same_as(tabular)
    # the stage's folder says what the space is (an empty one made DVC warn every round), and
    # reads back as the tabular space; a workspace from before it (an empty folder) still does
    files = tabular.to_stage_files()
    assert json.loads(files["space.json"]) == {"kind": "tabular"}
    again = FeatureSpace.from_files(files)
    assert again.same_as(tabular) and not again.has_text
    pd.testing.assert_frame_equal(tabular.transform(rows), get_feature_frame(rows))


def test_a_text_column_the_pool_lacks_or_that_has_no_words_is_an_error_naming_it():
    rows = _pool()
    with pytest.raises(ValueError, match=r"\['title'\], which the pool does not have"):
        fit_feature_space(
            rows, text_columns=("title",), params=TextParams(), fingerprint="", random_state=0
        )
    empty = rows.assign(body=pd.Series([""] * len(rows), dtype="string"))
    with pytest.raises(ValueError, match="text column 'body': no word"):
        _space(empty)


def test_lightgbm_learns_the_class_from_the_sparse_text_features():
    docs = make_documents(600, seed=1)
    rows = docs.drop(columns=["label"])
    space = _space(rows)
    codes = docs["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    features = space.transform(rows)
    booster = fit_booster(
        features[:400],
        codes[:400],
        params=TrainParams(num_boost_round=60),
        n_classes=3,
        random_state=0,
        categorical=space.categorical,
    )
    probs = predict_proba(booster, features[400:], 3)
    assert probs.shape == (200, 3)
    assert np.mean(probs.argmax(axis=1) == codes[400:]) > 0.85


def test_the_text_embedding_and_the_drift_columns_come_from_the_svd():
    rows = _pool()
    space = _space(rows, svd_components=8)
    assert space.embed(rows).shape == (len(rows), 8)
    drift = space.drift_frame(rows)
    assert "body" not in drift.columns
    assert [c for c in drift.columns if c.startswith("text_svd")] == [
        f"text_svd{i}" for i in range(8)
    ]


def test_the_diversity_embedding_of_a_text_item_is_its_standardized_svd_beside_the_numbers():
    from tasks.score import get_embedding, get_embedding_stats

    rows = _pool()
    space = _space(rows, svd_components=8)
    stats = get_embedding_stats(rows, space)
    assert list(stats.index) == ["length", *(f"text_svd{i}" for i in range(8))]
    embedded = get_embedding(rows, stats, space)
    assert embedded.shape == (len(rows), 9)
    np.testing.assert_allclose(embedded.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(embedded.std(axis=0), 1.0, atol=1e-9)
    # a tabular space embeds by the numbers alone, as before
    assert list(get_embedding_stats(rows).index) == ["length"]


# -- real rounds ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_rounds(prefect_api, tmp_path_factory):
    """Three rounds on 1,200 documents, 300 more added to the pool before the third (whose
    batch nobody answers: the simulated annotator's truth stays the first 1,200's)."""
    root = tmp_path_factory.mktemp("text") / "ws"
    docs = make_documents(1500, seed=0)
    catalog = init_workspace(
        root,
        pool=docs.iloc[:1200],
        id_column="item_id",
        classes=CLASSES,
        label_column="label",
        overrides=("select.seed_size=150", "select.batch_size=100"),
    )
    reports = {}
    for round_id in (1, 2, 3):
        if round_id == 3:
            later = docs.iloc[1200:]
            added = add_to_pool(root, later.drop(columns=["label"]), source="later.csv")
            assert added.items == 300 and added.pool_items == 1500
        al_round(str(root))
        reports[round_id] = {
            "features": json.loads((root / "reports/features.json").read_text()),
            "metrics": json.loads((root / "reports/metrics.json").read_text()),
            "round": (root / "reports/round.md").read_text(),
        }
        if round_id < 3:
            annotate_outbox(catalog, round_id, noise=0.0, seed=0)
    return {"root": root, "catalog": catalog, "reports": reports}


def test_the_vocabulary_is_fitted_when_the_pool_changes_and_carried_otherwise(text_rounds):
    features = {r: text_rounds["reports"][r]["features"] for r in (1, 2, 3)}
    assert [features[r]["refit"] for r in (1, 2, 3)] == [True, False, True]
    assert features[1]["text_columns"] == ["body"] and features[1]["detected"]
    assert features[1]["fitted_rows"] == 1200 and features[3]["fitted_rows"] == 1500
    assert features[1]["vocabulary"]["body"] > 300
    assert "text columns as TF-IDF, detected" in text_rounds["reports"][3]["round"]


def test_every_model_folder_keeps_the_space_it_was_trained_in(text_rounds):
    root = text_rounds["root"]
    space = (root / "models/features/space.json").read_bytes()
    assert (root / "models/candidate/features/space.json").read_bytes() == space
    champion = json.loads((root / "models/champion/meta.json").read_text())
    if champion.get("promoted_in_round") == 3:
        assert (root / "models/champion/features/space.json").read_bytes() == space
    assert (root / "models/champion/features/space.json").is_file()


def test_the_text_model_learns_and_every_stage_ran_on_it(text_rounds):
    metrics = text_rounds["reports"][3]["metrics"]
    assert metrics["candidate"]["macro_f1"] > 0.8  # the text carries the class
    root = text_rounds["root"]
    for report in ("flag", "health", "score", "select", "export"):
        assert (root / f"reports/{report}.json").is_file()
    scores = json.loads((root / "reports/score.json").read_text())
    assert scores["pool_items"] == 1500 and scores["predicted_items"] > 0
    batch = pd.read_csv(root / "data/outbox/round-0003/batch.csv", dtype=str)
    assert len(batch) == 100 and batch["body"].str.len().gt(0).all()


def test_a_rerun_of_a_text_round_is_exact(text_rounds):
    result = al_rerun(str(text_rounds["root"]), 3)
    assert result.identical, result.differences


def test_the_registered_text_model_predicts_raw_documents(text_rounds):
    root = text_rounds["root"]
    mlflow.set_tracking_uri(mlflow_uri(root))
    model = mlflow.pyfunc.load_model("models:/alloop@champion")
    docs = make_documents(50, seed=7, start=90000)
    out = model.predict(docs.drop(columns=["item_id", "label"]))
    assert list(out.columns) == [*CLASSES, "label"]
    assert np.mean(out["label"].to_numpy() == docs["label"].to_numpy()) > 0.8


def test_status_runs_on_a_text_workspace(text_rounds):
    done = run_cli(["alloop", "status", "-w", str(text_rounds["root"])], text_rounds["root"])
    assert done.returncode == 0, done.stderr


def test_a_simulation_on_documents_measures_against_a_reference_that_reads_the_text(tmp_path):
    from flows.simulate import SimulationSpec, simulate

    docs = make_documents(900, seed=3).drop(columns=["item_id"])
    docs["split"] = np.where(np.arange(len(docs)) % 4 == 0, "test", "train")
    path = tmp_path / "docs.parquet"
    docs.to_parquet(path)
    spec = SimulationSpec(
        dataset=path,
        split_column="split",
        strategies=("default", "random"),
        seeds=1,
        initial=60,
        batch=40,
        budget=140,
    )
    result = simulate(spec, tmp_path / "out")
    # the full-data model reads the words: as a category, every document would be unseen
    assert result.reference_score > 0.9
    assert set(result.curves["strategy"]) == {"diversity", "random"}
    last = result.curves.sort_values("labels").groupby("strategy").tail(1)
    assert (last["labels"] == 140).all() and (last["macro_f1"] > 0.6).all()
