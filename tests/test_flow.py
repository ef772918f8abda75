"""Three real rounds on a real dataset, end to end: Prefect, Great Expectations, cleanlab,
LightGBM, MLflow, DVC and git, in a temporary workspace."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_satimage_workspace, run_cli
from mlflow.tracking import MlflowClient

from flows import tracking
from flows.demo import annotate_outbox
from flows.pipeline import STAGE_NAMES
from flows.round import al_round
from flows.runtime import mlflow_uri
from tasks.catalog import Catalog

ROUNDS = 3
# never versioned, so never part of a round's state
UNTRACKED = (".git", ".dvc/cache", ".dvc/tmp", ".alloop", "data/incoming")

MESSY_ROWS = [
    # item_id, label, annotator, labeled_at, expected reason code (None = accepted)
    ("{issued}", "{good_label}", "expert-7", "2026-01-05T10:00:00Z", None),
    ("{issued}", "{good_label}", "expert-7", "2026-01-05T10:00:00Z", "duplicate_row"),
    ("no-such-item", "{good_label}", "expert-7", "2026-01-05T10:00:00Z", "unknown_item"),
    ("{never_issued}", "{good_label}", "expert-7", "2026-01-05T10:00:00Z", "not_issued"),
    ("{issued2}", "cat", "expert-7", "2026-01-05T10:00:00Z", "unknown_class"),
    ("{issued3}", "{good_label}", "", "2026-01-05T10:00:00Z", "missing_annotator"),
    ("{issued4}", "{good_label}", "expert-7", "last tuesday", "bad_timestamp"),
    ("{issued5}", "{good_label}", "expert-7", "2999-01-01T00:00:00Z", "future_timestamp"),
]


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every versioned file of the workspace."""
    digests = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(rel == u or rel.startswith(u + "/") for u in UNTRACKED):
            digests[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _write_messy_file(catalog: Catalog, classes: list[str]) -> list[str | None]:
    issued = pd.read_parquet(catalog.path("issued"))
    out = issued[issued["round_id"] == 2]["item_id"].tolist()
    ever = set(issued["item_id"])
    never = next(i for i in pd.read_parquet(catalog.pool_files()[0])["item_id"] if i not in ever)
    values = {
        "issued": out[0],
        "issued2": out[1],
        "issued3": out[2],
        "issued4": out[3],
        "issued5": out[4],
        "never_issued": never,
        "good_label": classes[0],
    }
    lines = ["item_id,label,annotator,labeled_at"]
    for row in MESSY_ROWS:
        lines.append(",".join(field.format(**values) for field in row[:4]))
    (catalog.path("incoming") / "expert-7 batch (final).csv").write_text("\n".join(lines) + "\n")
    (catalog.path("incoming") / "broken.json").write_text('[{"item_id": 1,')
    # an annotator sends last round's file again, under another name
    consumed = next(p for p in catalog.path("archive", 2).iterdir() if p.suffix == ".csv")
    (catalog.path("incoming") / "resent.csv").write_bytes(consumed.read_bytes())
    return [row[4] for row in MESSY_ROWS]


@pytest.fixture(scope="module")
def campaign(prefect_api, tmp_path_factory):
    """A workspace after three rounds, with snapshots of its files after each round."""
    root = tmp_path_factory.mktemp("flow") / "ws"
    catalog, classes = make_satimage_workspace(root)
    snapshots, results, expected = {}, [], []
    for round_id in range(1, ROUNDS + 1):
        results.append(al_round(str(root)))
        snapshots[round_id] = snapshot(root)
        if round_id < ROUNDS:
            annotate_outbox(catalog, round_id, noise=0.05, seed=0)
        if round_id == ROUNDS - 1:
            expected = _write_messy_file(catalog, classes)
    return {
        "root": root,
        "catalog": catalog,
        "snapshots": snapshots,
        "results": results,
        "expected_reasons": expected,
        "classes": classes,
    }


def test_every_round_is_a_tag_on_its_own_commit(campaign):
    root = campaign["root"]
    tags = run_cli(["git", "tag", "--list", "round-*"], root).stdout.split()
    assert tags == [f"round-{i:04d}" for i in range(1, ROUNDS + 1)]
    for result in campaign["results"]:
        tagged = run_cli(["git", "rev-list", "-n", "1", f"round-{result.round_id:04d}"], root)
        assert tagged.stdout.strip() == result.commit


def test_dvc_status_is_clean_after_the_rounds(campaign):
    done = run_cli(["dvc", "status"], campaign["root"])
    assert done.returncode == 0, done.stderr
    assert "Data and pipelines are up to date" in done.stdout


def test_dvc_lock_pins_every_stage(campaign):
    import yaml

    lock = yaml.safe_load((campaign["root"] / "dvc.lock").read_text())
    assert list(lock["stages"]) == list(STAGE_NAMES)
    for name, stage in lock["stages"].items():
        assert all("md5" in out for out in stage.get("outs", [])), name


def test_ledger_only_grows_round_over_round(campaign):
    import dvc.api

    root = campaign["root"]
    ledgers = []
    for round_id in range(1, ROUNDS + 1):
        data = dvc.api.read(
            "data/labels/ledger.parquet", repo=str(root), rev=f"round-{round_id:04d}", mode="rb"
        )
        ledgers.append(pd.read_parquet(io.BytesIO(data)))
    for before, after in zip(ledgers, ledgers[1:], strict=False):
        assert len(after) > len(before)
        pd.testing.assert_frame_equal(after.iloc[: len(before)], before)
    last = ledgers[-1]
    assert last["event_id"].is_unique
    assert set(last["round_id"]) == {2, 3}  # round 1 had no labels to merge


def test_labels_keep_the_split_they_were_issued_with(campaign):
    cat = campaign["catalog"]
    current = pd.read_parquet(cat.path("current"))
    issued = pd.read_parquet(cat.path("issued")).drop_duplicates("item_id").set_index("item_id")
    assert (current["split"].to_numpy() == issued.loc[current["item_id"], "split"].to_numpy()).all()
    assert {"train", "test"} <= set(current["split"])
    # test items come only from the random test slice, never from active selection
    tests = pd.read_parquet(cat.path("issued")).query("split == 'test'")
    assert set(tests["reason"]) == {"test"}


def test_messy_file_rows_are_accounted_for(campaign):
    cat, expected = campaign["catalog"], campaign["expected_reasons"]
    report = cat.load("validate_report")
    assert report["rows_read"] == report["rows_accepted"] + report["rows_quarantined"]
    rejected = pd.read_csv(cat.path("quarantine", ROUNDS), dtype=str)
    mine = rejected[rejected["source_file"] == "expert-7 batch (final).csv"]
    got = dict(zip(mine["source_row"].astype(int), mine["reason_code"], strict=True))
    want = {row: code for row, code in enumerate(expected, start=1) if code}
    assert got == want
    assert (mine["reason"].str.len() > 10).all()
    broken = rejected[rejected["source_file"] == "broken.json"]
    assert broken["reason_code"].tolist() == ["unreadable_file"]
    manifest = cat.load("manifest", ROUNDS)
    for entry in manifest:
        if entry["status"] == "read":
            assert entry["rows_read"] == entry["accepted"] + entry["quarantined"]
    # consumed files are archived exactly as received, and the incoming folder is empty
    assert (cat.path("archive", ROUNDS) / "broken.json").read_text() == '[{"item_id": 1,'
    assert not [p for p in cat.path("incoming").iterdir() if p.name != ".gitkeep"]


def test_mlflow_has_one_finished_run_per_round(campaign):
    runs = tracking.list_round_runs(campaign["root"])
    assert [r["round_id"] for r in runs] == list(range(1, ROUNDS + 1))
    assert {r["status"] for r in runs} == {"FINISHED"}
    for run, result in zip(runs, campaign["results"], strict=True):
        assert run["tags"]["alloop.git_commit"] == result.commit
    for run in runs[1:]:
        assert 0.3 < run["metrics"]["evaluate.candidate.macro_f1"] <= 1.0
        assert run["metrics"]["merge.labeled_items"] > 0
    client = MlflowClient(tracking_uri=mlflow_uri(campaign["root"]))
    last = client.get_run(runs[-1]["run_id"])
    params = campaign["catalog"].read_params()
    assert last.data.params["score.strategy"] == params.score.strategy
    assert last.data.params["train.learning_rate"] == str(params.train.learning_rate)
    history = client.get_metric_history(last.info.run_id, "merge.labeled_items")
    assert [m.step for m in history] == [ROUNDS]


def test_flow_runs_the_stages_of_dvc_yaml_in_order(campaign):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs(limit=200)
        last = max(flow_runs, key=lambda r: r.start_time)
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [last.id]}),
            task_run_filter=TaskRunFilter(),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
    assert [r.name.rsplit("-", 1)[0] for r in runs] == list(STAGE_NAMES)
    assert {r.state_type.value for r in runs} == {"COMPLETED"}


def test_checkout_of_a_round_tag_restores_its_files_byte_for_byte(campaign, tmp_path):
    copy = tmp_path / "ws"
    shutil.copytree(campaign["root"], copy, symlinks=True)
    for command in (["git", "checkout", "--quiet", "round-0002"], ["dvc", "checkout", "--quiet"]):
        done = run_cli(command, copy)
        assert done.returncode == 0, done.stderr
    assert snapshot(copy) == campaign["snapshots"][2]


def test_dvc_repro_reproduces_the_last_round_without_prefect(campaign, tmp_path):
    copy = tmp_path / "ws"
    shutil.copytree(campaign["root"], copy, symlinks=True)
    before = snapshot(copy)
    done = run_cli(["dvc", "repro", "--force", "--quiet"], copy)
    assert done.returncode == 0, done.stdout + done.stderr
    assert snapshot(copy) == before


def test_ledger_records_every_kind_of_event(campaign):
    ledger = pd.read_parquet(campaign["catalog"].path("ledger"))
    kinds = set(ledger["event"])
    assert {"label", "rejected", "consensus"} <= kinds
    rejected = ledger[(ledger["event"] == "rejected") & (ledger["round_id"] == ROUNDS)]
    expected = [code for code in campaign["expected_reasons"] if code] + ["unreadable_file"]
    assert sorted(rejected["outcome"]) == sorted(expected)
    flags = pd.read_parquet(campaign["catalog"].path("flags"))
    flagged = ledger[ledger["event"] == "flagged"]
    kept = flagged[flagged["outcome"] == "kept_confirmed"]
    assert len(flagged) - len(kept) == len(flags)
    # a label a second opinion confirmed is doubted again at most, never flagged again
    confirmed = ledger[(ledger["event"] == "resolved") & (ledger["outcome"] == "confirmed")]
    for event in kept.itertuples():
        assert (
            (confirmed["item_id"] == event.item_id) & (confirmed["round_id"] <= event.round_id)
        ).any()
        again = flags[(flags["item_id"] == event.item_id) & (flags["round_id"] == event.round_id)]
        assert again.empty
    # every consensus label in the ledger's latest consensus events is the current label
    latest = ledger[ledger["event"] == "consensus"].drop_duplicates("item_id", keep="last")
    current = pd.read_parquet(campaign["catalog"].path("current")).set_index("item_id")["label"]
    assert (latest.set_index("item_id")["label"] == current.loc[latest["item_id"]]).all()


def test_history_of_an_item_tells_its_whole_story(campaign):
    from flows.audit import get_item_history, read_tables

    ledger = pd.read_parquet(campaign["catalog"].path("ledger"))
    dup = ledger[(ledger["event"] == "rejected") & (ledger["outcome"] == "duplicate_row")]
    item = dup["item_id"].iloc[0]
    history = get_item_history(read_tables(campaign["root"]), item)
    events = history["event"].tolist()
    assert events[0] == "issued"
    assert "label" in events and "rejected" in events and "consensus" in events
    row = history[history["event"] == "rejected"].iloc[0]
    assert row["source"] == "expert-7 batch (final).csv:2"
    assert row["annotator"] == "expert-7" and row["round_id"] == ROUNDS


def test_audit_reads_a_past_round_through_dvc_without_touching_the_workspace(campaign):
    from flows.audit import get_audit, read_tables

    root = campaign["root"]
    before = snapshot(root)
    past = read_tables(root, at="round-0002")
    now = read_tables(root)
    assert set(past["ledger"]["round_id"]) == {2}
    pd.testing.assert_frame_equal(now["ledger"].iloc[: len(past["ledger"])], past["ledger"])
    audit = get_audit(now, round_id=ROUNDS, annotator="expert-7")
    assert set(audit.events["annotator"]) == {"expert-7"}
    counts = audit.annotators.set_index("annotator")
    # 7 rows rejected, one of them without an annotator: 6 are expert-7's
    assert counts.loc["expert-7", "rejected"] == 6 and counts.loc["expert-7", "label"] == 1
    assert snapshot(root) == before


def test_audit_and_history_commands(campaign):
    import json as _json

    root = campaign["root"]
    done = run_cli(
        ["alloop", "audit", "-w", str(root), "--at", "round-0002", "--format", "json"], root
    )
    assert done.returncode == 0, done.stdout + done.stderr
    payload = _json.loads(done.stdout)
    assert set(payload) == {"annotators", "flags", "events"}
    assert {e["round_id"] for e in payload["events"]} == {2}
    missing = run_cli(["alloop", "history", "never-seen-anywhere", "-w", str(root)], root)
    assert missing.returncode == 1 and "no events" in missing.stderr


def test_history_shows_rejected_rows_of_items_outside_the_pool(campaign):
    done = run_cli(
        ["alloop", "history", "no-such-item", "-w", str(campaign["root"])], campaign["root"]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "unknown_item" in done.stdout and "not in the pool" in done.stdout


def test_a_file_dropped_twice_is_recognised_and_not_merged_again(campaign):
    cat = campaign["catalog"]
    manifest = {e["file"]: e for e in cat.load("manifest", ROUNDS)}
    entry = manifest["resent.csv"]
    assert entry["status"] == "already_consumed"
    assert entry["same_as"].startswith("round-0002/")
    ledger = pd.read_parquet(cat.path("ledger"))
    assert not (ledger["source_file"] == "resent.csv").any()
    assert (cat.path("archive", ROUNDS) / "resent.csv").exists()  # kept as received, all the same
    assert "skipped: same content as round-0002/" in cat.load("round_report")


def test_log_batched_splits_at_mlflow_batch_limits(tmp_path):
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("limits")).info.run_id
    params = {f"p{i}": i for i in range(MAX_PARAMS_TAGS_PER_BATCH + 1)}
    metrics = [("m", float(i), i) for i in range(MAX_METRICS_PER_BATCH + 1)]
    tracking.log_batched(client, run_id, params=params, metrics=metrics)
    run = client.get_run(run_id)
    assert run.data.params == {key: str(value) for key, value in params.items()}
    assert len(client.get_metric_history(run_id, "m")) == MAX_METRICS_PER_BATCH + 1


def test_each_prefect_flow_run_is_named_after_its_round(campaign):
    import asyncio

    from prefect.client.orchestration import get_client

    async def names() -> list[str]:
        async with get_client() as client:
            return [run.name for run in await client.read_flow_runs()]

    expected = {f"{campaign['root'].name}-round-{r:04d}" for r in range(1, ROUNDS + 1)}
    assert expected <= set(asyncio.run(names()))


def test_files_for_people_are_readable_by_the_team(campaign):
    import os
    import stat

    cat = campaign["catalog"]
    mask = os.umask(0o022)
    os.umask(mask)
    for path in (
        cat.path("outbox", ROUNDS) / "batch.csv",
        cat.path("outbox", ROUNDS) / "tasks.json",
        cat.root / "params.yaml",
        cat.root / "dvc.yaml",
        cat.path("round_report"),
        cat.path("ledger"),
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


def test_the_history_plot_has_one_row_per_round(campaign):
    cat = campaign["catalog"]
    history = cat.load("history")
    assert history["round_id"].tolist() == list(range(1, ROUNDS + 1))
    labeled = [r.summaries.merge.labeled_items for r in campaign["results"]]
    assert history["labeled_items"].tolist() == labeled
    assert history["test_macro_f1"].iloc[1:].notna().all()
    shown = run_cli(["dvc", "plots", "show", "reports/history.csv"], cat.root)
    assert shown.returncode == 0, shown.stderr
    assert (cat.root / "dvc_plots" / "index.html").exists()
    # the rendering is ignored: never part of the next round's commit
    assert run_cli(["git", "status", "--porcelain"], cat.root).stdout == ""
