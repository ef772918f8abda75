"""A round's model as an MLflow pyfunc model: raw pool rows in, class probabilities out.

``mlflow.pyfunc.load_model("models:/alloop@champion")`` gives a model whose ``predict`` takes
rows shaped like the pool (``data/pool/*.parquet``: the feature columns, ``item_id`` optional
and ignored) and applies alloop's own encoding (the feature space the model was trained in,
:mod:`tasks.features`, then :func:`tasks.model.predict_proba`), so a user never rebuilds it.

The model's code is this module, imported by reference (the pickled model names
``flows.mlflow_model.ChampionModel``; nothing is copied with ``code_paths``): it loads wherever
alloop is installed, e.g. ``mlflow models serve --env-manager local`` in alloop's environment.

Artifacts: the booster's text (``model.txt``, which also holds the categories each text column
was trained on, LightGBM's ``pandas_categorical``: later frames are mapped onto them) and
``features.json``: the class list and the pool's feature columns, in order, with their pandas
dtypes, so that rows from JSON or CSV are cast back to the pool's types before the encoding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from tasks.schema import ITEM_ID

MODEL_FILE = "model.txt"
SPEC_FILE = "features.json"
#: The output column with the predicted class; the others are named by class.
LABEL = "label"
#: What the model needs besides alloop itself, pinned to the running versions. Passed to MLflow
#: explicitly: inferring them costs 4-6 s per model and records unrelated packages.
REQUIREMENTS = ("mlflow", "lightgbm", "pandas", "numpy", "scikit-learn", "pyarrow", "pydantic")


def get_feature_spec(
    pool_rows: pd.DataFrame, classes: Sequence[str], label_separator: str | None = None
) -> dict[str, Any]:
    """What the model needs to encode new rows as the round encoded the pool.

    Parameters
    ----------
    pool_rows : pd.DataFrame
        Pool rows as ``Catalog.read_pool`` returns them (zero rows suffice: only the columns
        and dtypes are read).
    classes : sequence of str
        The project's classes, in the order of the model's outputs.
    label_separator : str, optional
        A multilabel project's: the model's ``label`` is then the predicted set, its labels
        joined by it.
    """
    if ITEM_ID not in pool_rows.columns:
        raise ValueError(f"pool_rows must have an {ITEM_ID!r} column, got {list(pool_rows)}")
    if LABEL in classes:
        raise ValueError(f"a class may not be named {LABEL!r}: it names the predicted class")
    features = pool_rows.drop(columns=[ITEM_ID])
    return {
        "classes": [str(c) for c in classes],
        "columns": [{"name": name, "dtype": str(features[name].dtype)} for name in features],
        **({"label_separator": label_separator} if label_separator else {}),
    }


def get_signature(spec: dict[str, Any]) -> Any:
    """The model's MLflow signature: one probability per class and the predicted ``label``
    out. No input schema: MLflow's enforcement refuses integers for a ``double`` column (as
    JSON gives them for 92.0) and an ``item_id`` of another type than declared; the model
    itself casts rows to the pool's dtypes (:func:`get_pool_rows_as_trained`) and names any
    missing column. The columns are in ``features.json`` and the input example."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("double", name) for name in spec["classes"]] + [ColSpec("string", LABEL)]
    return ModelSignature(inputs=None, outputs=Schema(outputs))


@cache
def get_pip_requirements() -> tuple[str, ...]:
    """:data:`REQUIREMENTS` pinned to the installed versions (looked up once: 0.03 s)."""
    return tuple(f"{name}=={version(name)}" for name in REQUIREMENTS)


def save_pyfunc_model(
    path: Path,
    model_text: str,
    spec: dict[str, Any],
    *,
    extra_files: Sequence[Path] = (),
    input_example: pd.DataFrame | None = None,
) -> None:
    """Write the model (LightGBM text ``model_text``, encoding ``spec``) as an MLflow pyfunc
    model folder at ``path``, which must not exist. ``extra_files`` (e.g. the training
    ``meta.json``) go beside ``model.txt`` in its artifacts."""
    staging = path.with_name(path.name + ".artifacts")
    staging.mkdir(parents=True)
    (staging / MODEL_FILE).write_text(model_text)
    (staging / SPEC_FILE).write_text(json.dumps(spec, indent=1))
    artifacts = {"model": str(staging / MODEL_FILE), "spec": str(staging / SPEC_FILE)}
    for extra in extra_files:
        artifacts[extra.stem] = str(extra)
    mlflow.pyfunc.save_model(
        str(path),
        python_model=ChampionModel(),
        artifacts=artifacts,
        signature=get_signature(spec),
        input_example=input_example,
        pip_requirements=list(get_pip_requirements()),
        # MLflow otherwise copies uv.lock and pyproject.toml of the current folder, whatever
        # it is, into the model; the staging folder has none
        uv_project_path=staging,
    )


def get_pool_rows_as_trained(rows: pd.DataFrame, spec: dict[str, Any]) -> pd.DataFrame:
    """``rows`` with the pool's feature columns, in order and cast to the pool's dtypes, and a
    placeholder ``item_id``: what :meth:`tasks.features.FeatureSpace.transform` expects.

    Raises
    ------
    ValueError
        If a feature column is missing or its values cannot take the pool's dtype.
    """
    names = [c["name"] for c in spec["columns"]]
    missing = [name for name in names if name not in rows.columns]
    if missing:
        raise ValueError(f"rows lack the feature columns {missing[:10]}; expected {names}")
    cast = {}
    for column in spec["columns"]:
        name, dtype = column["name"], column["dtype"]
        try:
            cast[name] = rows[name].astype(dtype)
        except (TypeError, ValueError) as err:
            raise ValueError(f"column {name!r} cannot be read as {dtype}: {err}") from err
    frame = pd.DataFrame(cast, index=rows.index)
    frame.insert(0, ITEM_ID, pd.Series(range(len(frame)), index=rows.index, dtype="string"))
    return frame


class ChampionModel(mlflow.pyfunc.PythonModel):
    """See the module docstring. Output: one column per class (probabilities, rows sum to 1;
    for label sets, each label's own probability) and ``label`` (the most probable class, or
    the predicted set)."""

    def load_context(self, context: Any) -> None:
        from tasks.features import COMPONENTS_FILE, SPACE_FILE, FeatureSpace
        from tasks.multilabel import load_model

        self._booster = load_model(Path(context.artifacts["model"]).read_text())
        self._spec = json.loads(Path(context.artifacts["spec"]).read_text())
        # a text model's feature space, saved beside it (tasks/features.py); else tabular
        files = {
            name: Path(context.artifacts[Path(name).stem]).read_bytes()
            for name in (SPACE_FILE, COMPONENTS_FILE)
            if Path(name).stem in context.artifacts
        }
        self._space = FeatureSpace.from_files(files)

    def predict(
        self,
        context: Any,  # noqa: ARG002
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,  # noqa: ARG002
    ) -> pd.DataFrame:
        from tasks.model import predict_proba

        rows = pd.DataFrame(model_input)
        classes = self._spec["classes"]
        features = self._space.transform(
            get_pool_rows_as_trained(rows, self._spec).reset_index(drop=True)
        )
        probs = predict_proba(self._booster, features, len(classes))
        out = pd.DataFrame(probs, columns=classes, index=rows.index)
        separator = self._spec.get("label_separator")
        if separator:  # label sets: each column its own probability, the label the set
            from tasks.multilabel import get_predicted_sets

            out[LABEL] = get_predicted_sets(probs, classes, separator=separator)
        else:
            out[LABEL] = np.asarray(classes, dtype=object)[probs.argmax(axis=1)]
        return out
