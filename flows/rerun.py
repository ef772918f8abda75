"""``alloop rerun N``: run round N again from its recorded inputs, beside history.

The rerun happens in a temporary git worktree of the workspace (under ``.alloop/reruns/``)
checked out at the commit before round N, with DVC's cache shared, so nothing in the
workspace moves. Into it go round N's ``params.yaml`` and expectation suite (plus any ``-S``
overrides), this alloop's code, and the label files round N archived, dropped back into
``data/incoming/``; then ``al_round`` runs with round N's own clock.

The result is compared with round N file by file (git's tree, and DVC's hash of every out):

- no overrides, same code: every file must be identical, and the rerun says so; nothing is
  kept. A difference is a reproducibility bug: the rerun fails and keeps a branch to inspect.
- overrides or different code: the rerun's commit is kept on a branch ``rerun/round-NNNN-K``
  (its data pushed to the DVC remote, its MLflow run tagged ``alloop.rerun_of``), and what
  changed is reported: ``dvc metrics diff`` and the overlap of the selected batches.

No tag moves and no past commit changes: history is never rewritten.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from prefect import flow

from flows import versioning
from flows.pipeline import dump_dvc_yaml
from flows.workspace import CODE_PACKAGES, WorkspaceError, hold_workspace
from tasks.catalog import Catalog, get_artifact, round_name, write_text
from tasks.params import ParamsError, dump_params, load_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RerunResult:
    round_id: int
    identical: bool
    #: paths whose content differs from round N's (git files and DVC outs)
    differences: list[str]
    #: files of flows/ and tasks/ where this alloop differs from the code round N ran
    code_changes: list[str]
    overrides: list[str]
    branch: str | None
    commit: str
    metrics_diff: str = ""
    #: the selected batch: sizes, items in both, and the share of round N's batch kept
    selection: dict[str, float] = field(default_factory=dict)


def get_selection_overlap(original: pd.DataFrame, rerun: pd.DataFrame) -> dict[str, float]:
    """How much of round N's selected batch the rerun selected too."""
    a, b = set(original["item_id"]), set(rerun["item_id"])
    both = len(a & b)
    return {
        "original": len(a),
        "rerun": len(b),
        "both": both,
        "share_of_original": both / len(a) if a else 1.0,
    }


def get_out_differences(lock_a: dict, lock_b: dict) -> list[str]:
    """DVC outs whose recorded hash differs between two ``dvc.lock`` documents."""

    def outs(lock: dict) -> dict[str, str]:
        found = {}
        for stage in lock.get("stages", {}).values():
            for out in stage.get("outs", []):
                found[out["path"]] = out.get("md5", "")
        return found

    a, b = outs(lock_a), outs(lock_b)
    return sorted(p for p in a.keys() | b.keys() if a.get(p) != b.get(p))


def _read_at(root: Path, path: str, rev: str) -> bytes:
    import dvc.api

    return dvc.api.read(path, repo=str(root), rev=rev, mode="rb")


def _prepare_worktree(root: Path, tree: Path, base: str) -> None:
    """A worktree of the workspace at ``base``, its data checked out from the shared cache,
    pushing to the workspace's remote."""
    if tree.exists():  # left by an interrupted rerun
        versioning.git(root, "worktree", "remove", "--force", str(tree), check=False)
        shutil.rmtree(tree, ignore_errors=True)
    versioning.git(root, "worktree", "prune")
    tree.parent.mkdir(parents=True, exist_ok=True)
    versioning.git(root, "worktree", "add", "--quiet", "--detach", str(tree), base)
    versioning.dvc(tree, "config", "--local", "cache.dir", str(root / ".dvc" / "cache"))
    # a local remote is stored relative to .dvc/, which in the worktree is elsewhere: point
    # the worktree at the path the workspace resolves (DVC lists local paths resolved)
    for line in versioning.dvc(root, "config", "--list", "--project").splitlines():
        key, _, url = line.partition("=")
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "remote" and parts[2] == "url" and "://" not in url:
            resolved = str((root / ".dvc" / url).resolve())  # a no-op for an absolute path
            versioning.dvc(tree, "remote", "modify", "--local", parts[1], "url", resolved)
    # before round 1 there is no dvc.lock: only the files `dvc add` tracks (the pool)
    added = [p for p in tree.rglob("*.dvc") if p.is_file() and ".dvc" not in p.parent.parts]
    targets = [] if (tree / "dvc.lock").exists() else [str(p.relative_to(tree)) for p in added]
    versioning.dvc(tree, "checkout", "--quiet", *targets)


def _code_changes(tree: Path, tag: str) -> list[str]:
    changed = versioning.git(tree, "diff", "--name-only", tag, "--", *CODE_PACKAGES)
    return sorted(set(changed.split()))


@flow(name="al_rerun", persist_result=False, validate_parameters=True)
def al_rerun(workspace: str, round_id: int, overrides: Sequence[str] = ()) -> RerunResult:
    """Run round ``round_id`` of ``workspace`` again from its recorded inputs (module doc)."""
    from flows.recovery import check_no_interrupted_rollback, repair_after_crash
    from flows.round import al_round

    catalog = Catalog(Path(workspace).resolve())
    root = catalog.root
    with hold_workspace(root, "rerun"):
        repair_after_crash(catalog)
        check_no_interrupted_rollback(catalog)
        tag = round_name(round_id)
        if versioning.tag_commit_of(root, tag) is None:
            raise WorkspaceError(f"no recorded round {round_id} in {root} (no tag {tag})")
        tree = catalog.state_dir / "reruns" / tag
        try:
            _prepare_worktree(root, tree, f"{tag}^")
            rerun = Catalog(tree)
            # round N's params and suite, this alloop's code and pipeline
            versioning.git(tree, "checkout", tag, "--", "params.yaml", "gx")
            for name, source in CODE_PACKAGES.items():
                shutil.rmtree(tree / name)
                shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
            write_text(tree / "dvc.yaml", dump_dvc_yaml())
            if overrides:
                raw = yaml.safe_load(rerun.params_file.read_text())
                try:
                    params = load_params(raw, overrides)
                except ParamsError as exc:
                    raise WorkspaceError(str(exc)) from exc
                write_text(rerun.params_file, yaml.safe_dump(dump_params(params), sort_keys=False))
            code_changes = _code_changes(tree, tag)
            # the label files round N consumed, back in the incoming folder
            archive = get_artifact("archive").path_of(round_id)
            manifest = json.loads(_read_at(root, get_artifact("manifest").path_of(round_id), tag))
            for entry in manifest:
                content = _read_at(root, f"{archive}/{entry['file']}", tag)
                (rerun.path("incoming") / entry["file"]).write_bytes(content)
            started_at = yaml.safe_load(versioning.git(root, "show", f"{tag}:round.yaml"))
            al_round(
                str(tree),
                push=False,
                started_at=str(started_at["started_at"]),
                force=True,
                rerun_of=str(root),
            )
            commit = versioning.head_commit(tree)
            in_git = set(versioning.git(tree, "diff", "--name-only", tag, "HEAD").split())
            in_dvc = get_out_differences(
                yaml.safe_load(versioning.git(tree, "show", f"{tag}:dvc.lock")),
                yaml.safe_load((tree / "dvc.lock").read_text()),
            )
            # dvc.lock also records params and dependencies: its outs are compared one by one
            differences = sorted((in_git - {"dvc.lock"}) | set(in_dvc))
            identical = not differences
            branch = None
            metrics_diff = ""
            selection: dict[str, float] = {}
            if not identical or overrides:
                branch = _free_branch(root, f"rerun/{tag}")
                versioning.git(root, "branch", branch, commit)
                try:
                    versioning.dvc(tree, "push", "--quiet")
                except versioning.VersioningError as exc:
                    log.warning("the rerun's data stays in the local cache only: %s", exc)
                metrics_diff = versioning.dvc(tree, "metrics", "diff", tag, "HEAD", check=False)
                batch = get_artifact("batch").path
                before = pd.read_parquet(io.BytesIO(_read_at(root, batch, tag)))
                selection = get_selection_overlap(before, rerun.load("batch"))
        finally:
            versioning.git(root, "worktree", "remove", "--force", str(tree), check=False)
            shutil.rmtree(tree, ignore_errors=True)
            versioning.git(root, "worktree", "prune", check=False)
    return RerunResult(
        round_id=round_id,
        identical=identical,
        differences=differences,
        code_changes=code_changes,
        overrides=list(overrides),
        branch=branch,
        commit=commit,
        metrics_diff=metrics_diff,
        selection=selection,
    )


def _free_branch(root: Path, base: str) -> str:
    listed = versioning.git(root, "branch", "--list", f"{base}-*", "--format=%(refname:short)")
    existing = set(listed.split())
    k = 1
    while f"{base}-{k}" in existing:
        k += 1
    return f"{base}-{k}"
