"""``alloop report``: where the round page (``reports/round.html``) of a round is.

The last round's page is the workspace's own file. A recorded round's page is the one its
tag pins: read through DVC (the page is a DVC out) without touching the workspace, and written
to the local state folder (``.alloop/pages/round-NNNN.html``, never versioned), unless the
workspace's file is that very page. A round recorded before alloop wrote pages has none: its
page is rendered now from the files its tag pins (the history, the reports, the batch, the
annotators), in the same local folder. A past round's files are never rewritten.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flows import versioning
from tasks.catalog import PARAMS_FILE, ROUND_FILE, Catalog, get_artifact, round_name, write_bytes
from tasks.context import StageContext
from tasks.export import PAGE_READS, REPORTED, get_round_page_data
from tasks.params import ParamsError
from tasks.report_page import render_round_page
from tasks.summaries import SUMMARIES, ExportSummary, RoundSummaries, Summary

PAGE = "round_page"
#: the local folder (inside the workspace's state folder) for pages of past rounds
PAGES_DIR = "pages"
#: what a page rendered for a round that predates pages reads, by artifact name
RENDER_READS = (
    "history",
    "batch",
    *PAGE_READS,
    *(SUMMARIES[stage].report for stage in (*REPORTED, "export")),
)


class ReportError(ValueError):
    """The page asked for cannot be had (no such round, nothing recorded yet)."""


@dataclass(frozen=True)
class RoundPage:
    path: Path
    #: how it was got, for people: the workspace's file, read from the tag, rendered now
    how: str


def get_round_page(root: Path, round_id: int | None = None) -> RoundPage:
    """The page of ``round_id`` (None: the last round's)."""
    catalog = Catalog(root)
    if round_id is None:
        path = catalog.path(PAGE)
        if path.exists():
            return RoundPage(path, f"the page of {round_name(catalog.read_round().round_id)}")
        round_id = versioning.committed_round(root)
        if round_id < 1:
            raise ReportError(f"no round has run in {root} yet: `alloop round` writes the page")
    return _recorded_page(catalog, round_id)


def _recorded_page(catalog: Catalog, round_id: int) -> RoundPage:
    root, tag = catalog.root, round_name(round_id)
    if versioning.tag_commit_of(root, tag) is None:
        tags = versioning.round_tags(root)
        known = f"{tags[0]} to {tags[-1]}" if tags else "none yet"
        raise ReportError(f"round {round_id} is not recorded in {root} (rounds: {known})")
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(str(root), rev=tag)
    page_path = get_artifact(PAGE).path
    target = catalog.state_dir / PAGES_DIR / f"{tag}.html"
    if fs.exists(page_path):
        page = fs.read_bytes(page_path)
        here = catalog.path(PAGE)
        if here.exists() and here.read_bytes() == page:
            return RoundPage(here, f"the page of {tag} (the workspace's file)")
        if not (target.exists() and target.read_bytes() == page):
            write_bytes(target, page)
        return RoundPage(target, f"the page of {tag}, as its tag recorded it")
    write_bytes(target, render_recorded_round(fs, round_id).encode("utf-8"))
    return RoundPage(
        target, f"{tag} predates round pages: rendered now from the files its tag recorded"
    )


def render_recorded_round(fs: Any, round_id: int) -> str:
    """The page of a round whose tag has no page, from the files the tag pins (``fs``: a
    DVC file system at the tag). Reports another alloop wrote that this one cannot read
    are left out, as ``alloop status`` leaves them out."""
    with tempfile.TemporaryDirectory(prefix="alloop-page-") as tmp:
        recorded = Catalog(Path(tmp))
        for name in RENDER_READS:
            _copy(fs, get_artifact(name).path, recorded.root)
        for path in (PARAMS_FILE, ROUND_FILE):
            _copy(fs, path, recorded.root)
        summaries: dict[str, Summary] = {}
        for stage in (*REPORTED, "export"):
            cls = SUMMARIES[stage]
            data = recorded.load(cls.report)
            try:
                if data:
                    summaries[stage] = cls.from_dict(data)
            except ValueError:
                continue
        info = recorded.read_round()
        try:
            params = recorded.read_params()
        except (ParamsError, FileNotFoundError, yaml.YAMLError):
            classes, stop, seed = (), None, round_id
        else:
            classes, stop = tuple(params.project.classes), params.stop
            # the seed export would have used: the same page a round of this alloop writes
            seed = StageContext(recorded, params, info).random_state("export")
        export = summaries.pop("export", None)
        data = get_round_page_data(
            recorded.load,
            round_id=round_id,
            started_at=info.started_at,
            reports=RoundSummaries.of(summaries),
            classes=classes,
            stop=stop,
            batch_seconds=(
                export.expected_annotation_seconds if isinstance(export, ExportSummary) else None
            ),
            random_state=seed,
        )
        return render_round_page(data)


def _copy(fs: Any, path: str, root: Path) -> None:
    """The file ``path`` at the tag into ``root`` (nothing when the tag has none)."""
    if fs.exists(path) and fs.isfile(path):
        write_bytes(root / path, fs.read_bytes(path))
