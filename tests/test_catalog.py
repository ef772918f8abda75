"""The catalog: every artifact loads and saves by name, as its kind says; writes are atomic and
readable by teammates; a stage cannot touch an artifact its spec does not declare."""

from __future__ import annotations

import os
import stat

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tasks import schema
from tasks.catalog import ARTIFACTS, Catalog, RoundInfo, SavedModel, get_artifact
from tasks.context import StageContext, StageSpec, UndeclaredArtifact
from tasks.params import load_params

PARAMS = load_params({"project": {"classes": ["a", "b"]}})


def _ctx(root, spec=None, round_id=3):
    return StageContext(Catalog(root), PARAMS, RoundInfo(round_id, "2026-01-01T00:00:00Z"), spec)


def test_an_unknown_artifact_name_is_an_error_that_lists_the_known_ones(tmp_path):
    with pytest.raises(KeyError, match="declared: "):
        Catalog(tmp_path).path("leger")
    with pytest.raises(KeyError, match="leger"):
        StageSpec("x", "tasks.x", reads=("leger",), writes=(), params=())


def test_per_round_artifacts_need_the_round(tmp_path):
    catalog = Catalog(tmp_path)
    assert catalog.path("outbox", 3) == tmp_path / "data" / "outbox" / "round-0003"
    with pytest.raises(ValueError, match="per round"):
        catalog.path("outbox")


@pytest.mark.parametrize(
    "name", [n for n, a in ARTIFACTS.items() if a.kind == "table" and a.table_schema]
)
def test_tables_round_trip_and_an_absent_table_is_empty(tmp_path, name):
    catalog = Catalog(tmp_path)
    table_schema = dict(get_artifact(name).table_schema)
    assert list(catalog.load(name).columns) == list(table_schema)
    assert catalog.load(name).empty
    catalog.save(name, schema.empty(table_schema))
    assert catalog.path(name).exists()


def test_a_table_written_in_chunks_reads_back_and_keeps_no_dictionary_of_the_ids(tmp_path):
    catalog = Catalog(tmp_path)
    chunks = [
        pd.DataFrame(
            {
                "item_id": [f"i{k}" for k in range(start, start + 3)],
                "predicted_label": ["a", "b", "a"],
                "confidence": [0.9, 0.6, 0.7],
                "utility": [-0.1, float("nan"), -0.5],
            }
        )
        for start in (0, 3)
    ]
    assert catalog.save_chunks("scores", chunks, round_id=1) == 6
    back = list(catalog.iter_table("scores", round_id=1))
    pd.testing.assert_frame_equal(
        pd.concat(back, ignore_index=True),
        schema.conform(pd.concat(chunks, ignore_index=True), schema.SCORES),
    )
    meta = pq.ParquetFile(catalog.path("scores", 1)).metadata
    assert meta.num_row_groups == 2
    ids, labels = meta.row_group(0).column(0), meta.row_group(0).column(1)
    assert not ids.is_stats_set and not ids.has_dictionary_page
    assert labels.is_stats_set and labels.has_dictionary_page


def test_json_text_csv_and_folders_round_trip(tmp_path):
    catalog = Catalog(tmp_path)
    assert catalog.load("metrics") is None and catalog.load("round_report") is None
    catalog.save("metrics", {"b": 1, "a": [1, 2]})
    assert catalog.load("metrics") == {"a": [1, 2], "b": 1}
    catalog.save("round_report", "# round\n")
    assert catalog.load("round_report") == "# round\n"
    catalog.save("outbox", {"batch.csv": "item_id\n1\n", "tasks.json": b"[]"}, round_id=2)
    assert catalog.load("outbox", round_id=2) == {"batch.csv": b"item_id\n1\n", "tasks.json": b"[]"}
    history = pd.DataFrame([dict.fromkeys(schema.HISTORY, 1)]).assign(
        test_macro_f1=0.5, champion_macro_f1=None, promoted=True
    )
    catalog.save("history", history)
    back = catalog.load("history")
    assert back["test_macro_f1"].iloc[0] == 0.5 and pd.isna(back["champion_macro_f1"].iloc[0])
    assert bool(back["promoted"].iloc[0]) is True


def test_an_archive_folder_does_not_list_its_manifest_as_a_label_file(tmp_path):
    catalog = Catalog(tmp_path)
    (tmp_path / "data" / "incoming").mkdir(parents=True)
    (tmp_path / "data" / "incoming" / "a.csv").write_bytes(b"x")
    catalog.take_incoming(4)
    catalog.save("manifest", [{"file": "a.csv"}], round_id=4)
    assert catalog.load("archive", round_id=4) == {"a.csv": b"x"}
    assert not list((tmp_path / "data" / "incoming").iterdir())
    assert catalog.load_rounds("manifest", before_round=5) == {4: [{"file": "a.csv"}]}
    assert catalog.load_rounds("manifest", before_round=4) == {}


def test_a_model_folder_round_trips_with_its_cached_probabilities_and_predecessor(tmp_path):
    catalog = Catalog(tmp_path)
    assert catalog.load("champion") == SavedModel()
    probs = pd.DataFrame({"item_id": ["1"], "row_hash": [7], "p0": [0.4], "p1": [0.6]})
    old = SavedModel("old", {"promoted_in_round": 1})
    catalog.save("champion", SavedModel("new", {"promoted_in_round": 2}, probs, old))
    back = catalog.load("champion")
    assert (back.text, dict(back.meta)) == ("new", {"promoted_in_round": 2})
    pd.testing.assert_frame_equal(back.test_probs, probs)
    assert back.previous.text == "old" and back.previous.test_probs is None


def test_cached_probabilities_of_another_model_are_ignored(tmp_path):
    catalog = Catalog(tmp_path)
    probs = pd.DataFrame({"item_id": ["1"], "row_hash": [7], "p0": [1.0]})
    catalog.save("champion", SavedModel("model", {}, probs))
    (catalog.path("champion") / "model.txt").write_text("edited by hand")
    assert catalog.load("champion").test_probs is None


def test_a_swap_interrupted_between_its_renames_leaves_the_old_model_standing(tmp_path):
    catalog = Catalog(tmp_path)
    catalog.save("champion", SavedModel("old", {"promoted_in_round": 1}))
    folder = catalog.path("champion")
    folder.rename(folder.with_name(".champion.old"))  # the crash: moved away, new not in yet
    assert catalog.load("champion").text == "old"
    assert folder.exists() and not folder.with_name(".champion.old").exists()


def test_files_are_written_with_the_users_umask(tmp_path):
    catalog = Catalog(tmp_path)
    catalog.save("metrics", {"a": 1})
    catalog.save("outbox", {"batch.csv": "x"}, round_id=1)
    catalog.save("issued", schema.empty(schema.ISSUED))
    mask = os.umask(0o022)
    os.umask(mask)
    for path in (
        catalog.path("metrics"),
        catalog.path("outbox", 1) / "batch.csv",
        catalog.path("issued"),
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    assert stat.S_IMODE(catalog.path("outbox", 1).stat().st_mode) == 0o777 & ~mask


def test_a_stage_may_touch_only_what_its_spec_declares(tmp_path):
    spec = StageSpec("probe", "tasks.probe", reads=("current",), writes=("flags",), params=())
    ctx = _ctx(tmp_path, spec)
    ctx.load("current")
    ctx.save("flags", schema.empty(schema.FLAGS))
    with pytest.raises(UndeclaredArtifact, match="'probe' reads 'ledger'"):
        ctx.load("ledger")
    with pytest.raises(UndeclaredArtifact, match="writes 'current'"):
        ctx.save("current", schema.empty(schema.CURRENT))
    with pytest.raises(UndeclaredArtifact, match="earlier rounds 'issued'"):
        ctx.load_before("issued")
    with pytest.raises(UndeclaredArtifact, match="reads 'pool'"):
        ctx.pool_ids_at([0])


def test_load_before_gives_the_rows_of_earlier_rounds(tmp_path):
    catalog = Catalog(tmp_path)
    issued = pd.DataFrame(
        {"item_id": ["a", "b", "c"], "round_id": [1, 3, 2], "split": "train", "reason": "qc"}
    ).assign(utility=0.1)
    catalog.save("issued", issued)
    spec = StageSpec("select", "tasks.selection", reads=(), writes=(), params=())
    assert _ctx(tmp_path, spec).load_before("issued")["item_id"].tolist() == ["a", "c"]


def test_a_context_of_no_stage_loads_nothing(tmp_path):
    with pytest.raises(UndeclaredArtifact, match="no stage"):
        _ctx(tmp_path).load("current")


def test_pool_ids_are_found_by_id_or_position_a_row_group_at_a_time(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = tmp_path / "data" / "pool"
    pool.mkdir(parents=True)
    for part, first in enumerate((0, 50)):  # two partitions of five row groups of 10 ids
        ids = [f"i{k}" for k in range(first, first + 50)]
        table = pa.table({"item_id": ids, "x": list(range(50))})
        pq.write_table(table, pool / f"items-{part:04d}.parquet", row_group_size=10)
    wanted = pd.Series(["i77", "nope", "i3", None, "i3", "i49"], dtype="string")
    found = Catalog(tmp_path).read_pool_ids_among(wanted)
    assert found.tolist() == ["i3", "i49", "i77"]  # each once, in pool order
    assert found.dtype == "string"
    assert Catalog(tmp_path).read_pool_ids_among(pd.Series([], dtype="string")).empty
    rows = _ctx(tmp_path, StageSpec("v", "tasks.v", reads=("pool",), writes=(), params=()))
    assert rows.pool_ids_among(pd.Series(["i9", "x"])).tolist() == ["i9"]
    # by position, across row groups and partitions, as read_pool_ids orders them
    everything = Catalog(tmp_path).read_pool_ids()
    at = [0, 9, 10, 49, 50, 99]
    assert rows.pool_ids_at(at).tolist() == everything.iloc[at].tolist()
    assert rows.pool_ids_at([]).empty
    with pytest.raises(IndexError, match="past the pool's 100 items"):
        rows.pool_ids_at([5, 100])
    with pytest.raises(IndexError, match="ascending"):
        rows.pool_ids_at([7, 3])
    # counted over some partitions only (drift's old and new items)
    second = ["items-0001.parquet"]
    assert rows.pool_ids_at([0, 10, 49], partitions=second).tolist() == ["i50", "i60", "i99"]
    with pytest.raises(IndexError, match="past those partitions' 50 items"):
        rows.pool_ids_at([50], partitions=second)
    with pytest.raises(KeyError, match="items-0009.parquet"):
        rows.pool_ids_at([0], partitions=["items-0009.parquet"])
