"""The model's view of pool rows: the feature space, fitted on the pool and kept with each model.

A pool of numbers and categories needs nothing fitted: LightGBM takes the columns as they are
(text-like values as ``category``, :func:`get_feature_frame`). A pool with *text* columns
(``project.text_columns``, or detected: :func:`detect_text_columns`) needs a vocabulary: each
text column becomes sparse TF-IDF features (scikit-learn), fitted on the pool by the
``features`` stage, and every model folder keeps the space it was trained in, so the champion
scores the pool, and a rerun repeats a round, in exactly the features it was trained on.

In a text space the whole feature matrix is sparse (``scipy.sparse.csr_matrix``): numeric
columns as they are, other text-like columns as codes of the categories seen when the space
was fitted (LightGBM splits them as categories: :attr:`FeatureSpace.categorical`), then the
TF-IDF columns. No dense copy of the TF-IDF matrix is made; memory grows with the rows of the
chunk being transformed. The diversity strategy's representation of an item is the truncated
SVD of its TF-IDF row (:meth:`FeatureSpace.embed`), fitted with the vocabulary.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from tasks.catalog import get_sample_positions
from tasks.context import StageContext, StageSpec
from tasks.params import TextParams
from tasks.schema import ITEM_ID
from tasks.summaries import FeaturesSummary

STAGE = StageSpec(
    name="features",
    module=__name__,
    reads=("pool",),
    writes=("feature_space", "features_report"),
    params=("project", "text"),
)

SPACE_FILE = "space.json"
#: the tabular space's ``space.json`` in the ``feature_space`` folder: nothing is fitted
TABULAR_SPACE_JSON = b'{"kind": "tabular"}\n'
COMPONENTS_FILE = "svd.npy"
#: a string column is text when the median value has at least this many words
TEXT_MIN_MEDIAN_WORDS = 4
#: pool rows text columns are detected on
DETECT_ROWS = 1000

Features = pd.DataFrame | sp.csr_matrix


def get_feature_frame(pool_rows: pd.DataFrame) -> pd.DataFrame:
    """The tabular view of pool rows: every column but ``item_id``; text becomes categorical.

    pandas 3 string columns cannot be fed to LightGBM; as ``category`` they become native
    categorical splits, and LightGBM maps the categories of later frames onto the training ones.
    """
    features = pool_rows.drop(columns=[ITEM_ID])
    converted = {
        name: features[name].astype("category")
        for name in features.columns
        if not _is_numeric(features[name])
        and not isinstance(features[name].dtype, pd.CategoricalDtype)
    }
    return features.assign(**converted) if converted else features


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)


def take_rows(features: Features, rows: np.ndarray) -> Features:
    """Rows of a feature matrix by position (int indices or a boolean mask)."""
    if isinstance(features, pd.DataFrame):
        return features.iloc[rows] if np.asarray(rows).dtype != bool else features[rows]
    return features[np.asarray(rows)]


def count_rows(features: Features) -> int:
    return int(features.shape[0])


@dataclass(frozen=True, eq=False)
class TextColumn:
    """One text column's vocabulary and inverse document frequencies."""

    name: str
    vocabulary: tuple[str, ...]
    idf: np.ndarray

    def vectorizer(self, params: TextParams) -> TfidfVectorizer:
        vectorizer = _new_vectorizer(params, vocabulary=list(self.vocabulary))
        vectorizer.idf_ = self.idf
        return vectorizer


@dataclass(frozen=True, eq=False)
class FeatureSpace:
    """What turns pool rows into model features. The empty space is the tabular one.

    Attributes
    ----------
    text : tuple of TextColumn
        The text columns, each with its fitted vocabulary; empty: a tabular space.
    numeric : tuple of str
        Numeric columns (text spaces only; a tabular space takes every column as it comes).
    categories : mapping of str to tuple of str
        Other text-like columns and the categories seen when fitted (text spaces only).
    components : np.ndarray of float, shape (k, n_text_features), optional
        The truncated SVD the diversity strategy embeds text items with.
    params : TextParams
        The vectorizer's settings.
    fingerprint : str
        What the space was fitted on (the pool's partitions and the settings): the features
        stage refits only when it changes.
    """

    text: tuple[TextColumn, ...] = ()
    numeric: tuple[str, ...] = ()
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    components: np.ndarray | None = None
    params: TextParams = field(default_factory=TextParams)
    fingerprint: str = ""

    @property
    def has_text(self) -> bool:
        return bool(self.text)

    @property
    def text_columns(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.text)

    @property
    def categorical(self) -> tuple[int, ...]:
        """Positions of the categorical columns in :meth:`transform`'s matrix."""
        start = len(self.numeric)
        return tuple(range(start, start + len(self.categories)))

    @property
    def n_features(self) -> int:
        return (
            len(self.numeric)
            + len(self.categories)
            + sum(len(column.vocabulary) for column in self.text)
        )

    def same_as(self, other: FeatureSpace) -> bool:
        """Whether both spaces turn rows into the same features."""
        return self.to_files() == other.to_files()

    def transform(self, pool_rows: pd.DataFrame) -> Features:
        """The model's features of ``pool_rows``: :func:`get_feature_frame` in a tabular space,
        a sparse matrix in a text space (numeric, category codes, TF-IDF, in that order)."""
        if not self.has_text:
            return get_feature_frame(pool_rows)
        blocks = [self._dense_block(pool_rows), *self._text_blocks(pool_rows)]
        return sp.hstack(blocks, format="csr", dtype=np.float64)

    def embed(self, pool_rows: pd.DataFrame) -> np.ndarray:
        """The SVD coordinates of the rows' TF-IDF features (text spaces only).

        Returns
        -------
        np.ndarray of float, shape (len(pool_rows), k)
        """
        if self.components is None:
            raise ValueError("a tabular feature space has no text embedding")
        tfidf = sp.hstack(self._text_blocks(pool_rows), format="csr", dtype=np.float64)
        return np.asarray(tfidf @ self.components.T.astype(np.float64))

    def drift_frame(self, pool_rows: pd.DataFrame) -> pd.DataFrame:
        """The columns drift is tested on (:func:`tasks.drift.find_drift`): the tabular frame;
        in a text space the text columns are replaced by their SVD coordinates (``text_svd<i>``),
        since a test per word, or per distinct document, says nothing."""
        frame = get_feature_frame(pool_rows.drop(columns=list(self.text_columns)))
        if self.components is None:
            return frame
        embedded = self.embed(pool_rows)
        names = [f"text_svd{i}" for i in range(embedded.shape[1])]
        return pd.concat(
            [frame.reset_index(drop=True), pd.DataFrame(embedded, columns=names)], axis=1
        )

    def _dense_block(self, pool_rows: pd.DataFrame) -> sp.csr_matrix:
        columns = [
            pd.to_numeric(pool_rows[name], errors="coerce").astype(float).to_numpy()
            for name in self.numeric
        ]
        for name, known in self.categories.items():
            codes = pd.Index(list(known)).get_indexer(pool_rows[name].astype("string").to_numpy())
            columns.append(np.where(codes < 0, np.nan, codes).astype(float))
        if not columns:
            return sp.csr_matrix((len(pool_rows), 0), dtype=np.float64)
        dense = np.column_stack(columns)
        # zeros stay implicit; a missing value is stored, LightGBM reads it as missing
        return sp.csr_matrix(dense)

    @cached_property
    def _vectorizers(self) -> tuple[TfidfVectorizer, ...]:
        return tuple(column.vectorizer(self.params) for column in self.text)

    def _text_blocks(self, pool_rows: pd.DataFrame) -> list[sp.csr_matrix]:
        if pool_rows.empty:
            return [sp.csr_matrix((0, len(column.vocabulary))) for column in self.text]
        return [
            vectorizer.transform(_documents(pool_rows[column.name]))
            for column, vectorizer in zip(self.text, self._vectorizers, strict=True)
        ]

    # -- files ------------------------------------------------------------------------------
    def to_files(self) -> dict[str, bytes]:
        """The space as files of a model folder; the same space gives the same bytes. A model
        trained in the tabular space carries none."""
        if not self.has_text:
            return {}
        space = {
            "fingerprint": self.fingerprint,
            "params": self.params.model_dump(mode="json"),
            "numeric": list(self.numeric),
            "categories": {name: list(known) for name, known in self.categories.items()},
            "text": [
                {
                    "name": column.name,
                    "vocabulary": list(column.vocabulary),
                    "idf": [float(v) for v in column.idf],
                }
                for column in self.text
            ],
        }
        files = {SPACE_FILE: (json.dumps(space, sort_keys=True) + "\n").encode("utf-8")}
        if self.components is not None:
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(self.components), allow_pickle=False)
            files[COMPONENTS_FILE] = buffer.getvalue()
        return files

    def to_stage_files(self) -> dict[str, bytes]:
        """The ``feature_space`` artifact's files: :meth:`to_files`, or for the tabular space a
        ``space.json`` that says so. An empty folder made DVC warn on every round's commit
        ("'models/features' is empty"), and an auditor reads here what the space was."""
        return self.to_files() or {SPACE_FILE: TABULAR_SPACE_JSON}

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> FeatureSpace:
        """The space :meth:`to_files` or :meth:`to_stage_files` wrote; no files (a tabular
        model, or a workspace from before the tabular ``space.json``): the tabular space."""
        if SPACE_FILE not in files:
            return cls()
        space = json.loads(files[SPACE_FILE].decode("utf-8"))
        if space.get("kind") == "tabular":
            return cls()
        components = (
            np.load(io.BytesIO(files[COMPONENTS_FILE]), allow_pickle=False)
            if COMPONENTS_FILE in files
            else None
        )
        return cls(
            text=tuple(
                TextColumn(
                    name=column["name"],
                    vocabulary=tuple(column["vocabulary"]),
                    idf=np.asarray(column["idf"], dtype=np.float64),
                )
                for column in space["text"]
            ),
            numeric=tuple(space["numeric"]),
            categories={name: tuple(known) for name, known in space["categories"].items()},
            components=components,
            params=TextParams(**space["params"]),
            fingerprint=space["fingerprint"],
        )


def _documents(column: pd.Series) -> list[str]:
    return column.astype("string").fillna("").tolist()


def _new_vectorizer(params: TextParams, vocabulary: list[str] | None = None) -> TfidfVectorizer:
    return TfidfVectorizer(
        lowercase=params.lowercase,
        ngram_range=(1, params.ngram_max),
        min_df=params.min_df if vocabulary is None else 1,
        max_df=params.max_df,
        max_features=params.max_features if vocabulary is None else None,
        sublinear_tf=params.sublinear_tf,
        vocabulary=vocabulary,
        dtype=np.float64,
    )


def detect_text_columns(sample: pd.DataFrame) -> dict[str, float]:
    """The string columns of ``sample`` that hold prose, with the median words per value.

    A column is text when its median non-empty value has at least
    :data:`TEXT_MIN_MEDIAN_WORDS` words; a name, a city or a code is one to three words and
    stays a category.
    """
    found = {}
    for name in sample.columns:
        if name == ITEM_ID or _is_numeric(sample[name]):
            continue
        values = sample[name].dropna().astype("string")
        if values.empty:
            continue
        words = float(values.str.split().str.len().median())
        if words >= TEXT_MIN_MEDIAN_WORDS:
            found[name] = words
    return found


def choose_text_columns(
    declared: Sequence[str] | None, head: pd.DataFrame
) -> tuple[tuple[str, ...], dict[str, float]]:
    """The text columns: ``declared`` (``project.text_columns``), or those
    :func:`detect_text_columns` finds in ``head`` (the first :data:`DETECT_ROWS` pool rows)
    when it is None; and what detection found (empty when declared)."""
    if declared is not None:
        return tuple(declared), {}
    detected = detect_text_columns(head)
    return tuple(detected), detected


def get_fingerprint(
    partitions: Mapping[str, int], text_columns: Sequence[str], params: TextParams
) -> str:
    """A digest of the pool's partitions (names and rows: partitions are append-only), the
    text columns and the vectorizer's settings."""
    key = {
        "partitions": sorted(partitions.items()),
        "text_columns": list(text_columns),
        "params": params.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def fit_feature_space(
    rows: pd.DataFrame,
    *,
    text_columns: Sequence[str],
    params: TextParams,
    fingerprint: str,
    random_state: int,
) -> FeatureSpace:
    """Fit the vocabularies and the SVD on ``rows`` (a sample of the pool).

    Parameters
    ----------
    rows : pd.DataFrame
        Pool rows (``item_id`` plus features); at most ``params.fit_rows`` of them.
    text_columns : sequence of str
        The columns to vectorize; empty: the tabular space.

    Raises
    ------
    ValueError
        If a text column is missing, or holds no word in any row.
    """
    if not text_columns:
        return FeatureSpace()
    missing = [name for name in text_columns if name not in rows.columns]
    if missing:
        raise ValueError(
            f"project.text_columns names {missing}, which the pool does not have "
            f"(its columns: {[c for c in rows.columns if c != ITEM_ID]})"
        )
    text = []
    for name in text_columns:
        vectorizer = _new_vectorizer(params)
        try:
            vectorizer.fit(_documents(rows[name]))
        except ValueError as exc:  # empty vocabulary
            raise ValueError(
                f"text column {name!r}: no word to learn a vocabulary from ({exc})"
            ) from exc
        vocabulary = vectorizer.get_feature_names_out()
        text.append(TextColumn(name, tuple(str(t) for t in vocabulary), vectorizer.idf_.copy()))
    others = [c for c in rows.columns if c != ITEM_ID and c not in text_columns]
    numeric = tuple(c for c in others if _is_numeric(rows[c]))
    categories = {
        c: tuple(sorted(rows[c].dropna().astype("string").unique().tolist()))
        for c in others
        if c not in numeric
    }
    space = FeatureSpace(
        text=tuple(text),
        numeric=numeric,
        categories=categories,
        params=params,
        fingerprint=fingerprint,
    )
    n_text = sum(len(column.vocabulary) for column in text)
    k = min(params.svd_components, n_text - 1, len(rows) - 1)
    if k < 1:
        return space
    svd = TruncatedSVD(n_components=k, random_state=random_state % 2**32)
    svd.fit(sp.hstack(space._text_blocks(rows), format="csr"))
    return FeatureSpace(
        text=space.text,
        numeric=numeric,
        categories=categories,
        components=svd.components_.astype(np.float32),
        params=params,
        fingerprint=fingerprint,
    )


# -- the stage ------------------------------------------------------------------------------
def run(ctx: StageContext) -> FeaturesSummary:
    """Fit the feature space on the pool, or carry the last round's when neither the pool nor
    the settings changed (a vocabulary is fitted when a pool arrives, not every night)."""
    params = ctx.params
    before = FeatureSpace.from_files(ctx.load_before("feature_space"))
    text_columns, detected = choose_text_columns(
        params.project.text_columns, ctx.pool_head(DETECT_ROWS)
    )
    fingerprint = get_fingerprint(ctx.pool_partitions(), text_columns, params.text)
    refit = False
    fitted_rows = 0
    if not text_columns:
        space = FeatureSpace()
    elif before.has_text and before.fingerprint == fingerprint:
        space = before
    else:
        picked = get_sample_positions(
            sum(ctx.pool_partitions().values()),
            size=params.text.fit_rows,
            random_state=ctx.random_state("features"),
        )
        rows = ctx.pool_rows(ctx.pool_ids_at(picked), ordered=False)
        space = fit_feature_space(
            rows,
            text_columns=text_columns,
            params=params.text,
            fingerprint=fingerprint,
            random_state=ctx.random_state("features-svd"),
        )
        refit, fitted_rows = True, len(rows)
    ctx.save("feature_space", space.to_stage_files())
    summary = FeaturesSummary(
        text_columns=list(space.text_columns),
        detected=params.project.text_columns is None and bool(text_columns),
        refit=refit,
        n_features=space.n_features if space.has_text else len(ctx.pool_head(1).columns) - 1,
        fitted_rows=fitted_rows,
        vocabulary={column.name: len(column.vocabulary) for column in space.text},
        median_words={name: round(words, 1) for name, words in detected.items()},
        svd_components=0 if space.components is None else int(space.components.shape[0]),
    )
    ctx.save("features_report", summary.to_dict())
    return summary


def load_space(ctx: StageContext) -> FeatureSpace:
    """This round's feature space (the ``features`` stage's)."""
    return FeatureSpace.from_files(ctx.load("feature_space"))


def model_space(model: object) -> FeatureSpace:
    """The feature space a saved model (:class:`tasks.catalog.SavedModel`) was trained in."""
    return FeatureSpace.from_files(getattr(model, "features", None) or {})
