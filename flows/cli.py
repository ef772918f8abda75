"""The ``alloop`` command line: a thin, typed layer over the flows."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="alloop: active learning as an operated, versioned pipeline.",
)
console = Console()
log = logging.getLogger("alloop")

LABEL_LIKE = {"label", "labels", "target", "class", "y"}

WorkspaceOpt = Annotated[
    Path, typer.Option("--workspace", "-w", help="The workspace (default: current folder).")
]

TeamApiOpt = Annotated[
    str, typer.Option(help="The team's Prefect API, e.g. http://prefect.internal:4200/api.")
]


def _setup(workspace: Path) -> Path:
    """Settings for this process, before Prefect/MLflow/DVC are imported."""
    from flows import runtime

    root = workspace.resolve()
    runtime.configure(root)
    return root


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=1)


def _quiet_prefect():  # type: ignore[no-untyped-def]
    # the per-flow heartbeat thread costs ~1 s per flow run; the env var cannot express None
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Folder of the new workspace.")],
    pool: Annotated[Path, typer.Option(help="Unlabeled items: parquet or CSV.")],
    id_column: Annotated[str, typer.Option(help="Column with each item's unique id.")],
    classes: Annotated[str, typer.Option(help="Comma-separated class names, e.g. A,B,C.")],
    label_column: Annotated[
        str | None, typer.Option(help="True labels, for simulations and demos only.")
    ] = None,
    remote: Annotated[
        str | None, typer.Option(help="DVC remote URL (default: a folder inside the workspace).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-S", help="Override a param: section.key=value")
    ] = None,
) -> None:
    """Create a workspace and import the pool."""
    from flows.workspace import WorkspaceError, init_workspace, read_table_file

    _setup(path)
    names = [c.strip() for c in classes.split(",") if c.strip()]
    try:
        raw = read_table_file(pool)
        looks_like_labels = [c for c in raw.columns if str(c).lower() in LABEL_LIKE]
        if label_column is None and looks_like_labels:
            log.warning(
                "the pool has a column %s that looks like labels; it will be used as a "
                "feature. If it holds true labels (simulation only), pass --label-column.",
                looks_like_labels,
            )
        catalog = init_workspace(
            path,
            pool=raw,
            id_column=id_column,
            classes=names,
            label_column=label_column,
            remote_url=remote,
            overrides=tuple(set_ or ()),
        )
    except WorkspaceError as exc:
        raise _fail(str(exc)) from None
    console.print(f"workspace ready at [bold]{catalog.root}[/]; next: alloop round -w {path}")


@app.command()
def clone(
    source: Annotated[str, typer.Argument(help="The workspace's git repository (URL or path).")],
    path: Annotated[Path, typer.Argument(help="Folder of the recovered workspace.")],
) -> None:
    """Recover a workspace on a new machine: git clone, then dvc pull from its remote."""
    import os

    from flows.runtime import QUIET

    os.environ.update(QUIET)  # no Prefect state to set up: git clone wants an empty folder
    from flows.workspace import WorkspaceError, clone_workspace

    try:
        catalog = clone_workspace(source, path)
    except WorkspaceError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"workspace recovered at [bold]{catalog.root}[/] (round {catalog.read_round().round_id})"
    )


@app.command(name="round")
def round_(
    workspace: WorkspaceOpt = Path("."),
    started_at: Annotated[
        str | None,
        typer.Option(help="The round's clock, ISO 8601 with zone (default: now); for replays."),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Run even with no new label file and no new pool items.")
    ] = False,
) -> None:
    """Run one round: validate, merge, flag, train, evaluate, score, select, export, record.

    A round with nothing new (no file in data/incoming, no new pool items) is skipped and says
    so, unless --force; an interrupted round is resumed.
    """
    root = _setup(workspace)
    from flows.workspace import WorkspaceBusy, WorkspaceError, hold_workspace

    try:
        # held before Prefect starts (seconds), so a second command fails at once
        with hold_workspace(root, "round"):
            from flows.round import al_round

            with _quiet_prefect():
                result = al_round(str(root), started_at=started_at, force=force)
    except (WorkspaceBusy, WorkspaceError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    if result.skipped:
        console.print(result.skipped)
        return
    console.print(f"[bold]round-{result.round_id:04d}[/] recorded as {result.commit[:10]}")
    console.print((root / "reports" / "round.md").read_text())


@app.command()
def serve(
    workspace: WorkspaceOpt = Path("."),
    cron: Annotated[str, typer.Option(help="When rounds run, as a cron string.")] = "0 2 * * *",
    timezone: Annotated[str, typer.Option(help="The cron's IANA time zone.")] = "UTC",
    api_url: Annotated[
        str | None,
        typer.Option(help="A team's Prefect API (default: start a local server in the workspace)."),
    ] = None,
) -> None:
    """Run rounds on a schedule, by Prefect's scheduler, until stopped (Ctrl-C or SIGTERM).

    al_round is served as the deployment al_round/alloop-FOLDER with the cron schedule. A night
    with nothing new runs nothing and logs why.
    """
    root = _setup(workspace)
    from flows.schedule import get_deployment_name, serve_rounds
    from flows.workspace import WorkspaceBusy, WorkspaceError, hold_workspace

    if not (root / "params.yaml").is_file():
        raise _fail(f"{root} is not an alloop workspace (no params.yaml); see `alloop init`")
    console.print(
        f"serving [bold]al_round/{get_deployment_name(root)}[/] for {root}: '{cron}' "
        f"({timezone}), Prefect API {api_url or 'local (started now)'}; Ctrl-C stops"
    )
    try:
        with hold_workspace(root, "serve", lock_name="serve.lock"):
            serve_rounds(root, cron=cron, timezone=timezone, api_url=api_url)
    except (WorkspaceBusy, WorkspaceError) as exc:
        raise _fail(str(exc)) from None
    console.print("stopped serving")


@app.command()
def deploy(
    pool: Annotated[str, typer.Option(help="The work pool (created, type process, if missing).")],
    api_url: TeamApiOpt,
    workspace: WorkspaceOpt = Path("."),
    cron: Annotated[str, typer.Option(help="When rounds run, as a cron string.")] = "0 2 * * *",
    timezone: Annotated[str, typer.Option(help="The cron's IANA time zone.")] = "UTC",
) -> None:
    """Register rounds on a schedule with a work pool of a Prefect server; `alloop worker` runs
    them. Unlike `serve`, nothing of alloop's stays up between rounds but the worker.

    The deployment is al_round/alloop-FOLDER; its code is this alloop checkout, read in place,
    so the worker runs where these paths exist.
    """
    root = _setup(workspace)
    from flows.schedule import deploy_rounds
    from flows.workspace import WorkspaceError

    if not (root / "params.yaml").is_file():
        raise _fail(f"{root} is not an alloop workspace (no params.yaml); see `alloop init`")
    try:
        name, created = deploy_rounds(
            root, pool=pool, cron=cron, timezone=timezone, api_url=api_url
        )
    except WorkspaceError as exc:
        raise _fail(str(exc)) from None
    if created:
        console.print(f"created work pool [bold]{pool}[/] (type process)")
    console.print(
        f"deployed [bold]{name}[/] for {root}: '{cron}' ({timezone}) on work pool {pool}; "
        f"start its worker with: alloop worker --pool {pool} --api-url {api_url}"
    )


@app.command()
def worker(
    pool: Annotated[str, typer.Option(help="The work pool whose rounds to run.")],
    api_url: TeamApiOpt,
    run_once: Annotated[
        bool, typer.Option(help="Poll once, run what is due, and exit when it has finished.")
    ] = False,
) -> None:
    """Prefect's process worker for a work pool, with this alloop's Python and nothing sent
    home; runs the rounds `alloop deploy` registered until stopped (Ctrl-C or SIGTERM)."""
    from flows.schedule import exec_worker
    from flows.workspace import WorkspaceError

    try:
        exec_worker(pool, api_url=api_url, run_once=run_once)
    except WorkspaceError as exc:
        raise _fail(str(exc)) from None


@app.command()
def rerun(
    round_id: Annotated[int, typer.Argument(help="The recorded round to run again.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-S", help="Override a param: section.key=value")
    ] = None,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Run round N again from its recorded inputs (round N-1's state, round N's files).

    Without overrides it must reproduce round N exactly, and says so. With overrides (or
    other code) the result goes on a branch rerun/round-NNNN-K, with what changed.
    """
    root = _setup(workspace)
    from flows.workspace import WorkspaceBusy, WorkspaceError, hold_workspace

    overrides = tuple(set_ or ())
    try:
        with hold_workspace(root, "rerun"):
            from flows.rerun import al_rerun

            with _quiet_prefect():
                result = al_rerun(str(root), round_id, overrides)
    except (WorkspaceBusy, WorkspaceError) as exc:
        raise _fail(str(exc)) from None
    name = f"round-{round_id:04d}"
    if result.code_changes:
        console.print(f"this alloop's code differs from {name}'s in {result.code_changes}")
    if result.identical:
        console.print(
            f"[bold green]{name} reproduced exactly[/]: same selection, same model bytes, same "
            "metrics (every versioned file and DVC output identical)"
        )
        return
    console.print(
        f"{name} rerun with {list(overrides) or 'no overrides'}: kept on branch "
        f"[bold]{result.branch}[/] ({result.commit[:10]})"
    )
    console.print(f"files that differ from {name}: {', '.join(result.differences)}")
    if result.selection:
        sel = result.selection
        console.print(
            f"selection: {sel['both']} of {sel['original']} items of {name}'s batch selected "
            f"again ({sel['share_of_original']:.0%}); the rerun's batch has {sel['rerun']}"
        )
    if result.metrics_diff:
        console.print("dvc metrics diff:\n" + result.metrics_diff, soft_wrap=True, markup=False)
    if not overrides and not result.code_changes:
        raise _fail(f"{name} was NOT reproduced: same inputs, params and code gave other files")


@app.command()
def rollback(
    to_round: Annotated[int, typer.Argument(help="The round whose state becomes current.")],
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Make round N's state current again, as a new commit and tag on top of history.

    The pool, labels, flags, models and params of round N come back; the ledger keeps every
    event and records the rollback; files waiting in data/incoming stay for the next round.
    """
    root = _setup(workspace)
    from flows.workspace import WorkspaceBusy, WorkspaceError, hold_workspace

    try:
        with hold_workspace(root, "rollback"):
            from flows.rollback import al_rollback

            with _quiet_prefect():
                result = al_rollback(str(root), to_round)
    except (WorkspaceBusy, WorkspaceError) as exc:
        raise _fail(str(exc)) from None
    champion = (
        f"round {result.champion_round} (model version {result.champion_version})"
        if result.champion_version
        else "none"
    )
    console.print(
        f"rolled back to [bold]round-{result.to_round:04d}[/] from round-{result.from_round:04d}:"
        f" commit {result.commit[:10]}, tag {result.tag}; MLflow champion: {champion}; "
        f"the next round is round-{result.from_round + 1:04d}"
    )


@app.command()
def status(workspace: WorkspaceOpt = Path(".")) -> None:
    """The current round, labels by class and split, the last metrics, the batch that is out."""
    root = _setup(workspace)
    from flows.status import get_status
    from tasks.catalog import Catalog

    st = get_status(Catalog(root))
    console.print(f"[bold]workspace[/] {root}")
    pending = (
        " (started, not recorded: the next `alloop round` resumes it)"
        if (st.round_id > st.committed_round)
        else ""
    )
    console.print(f"round: {st.round_id}{pending}; tags: {', '.join(st.tags) or 'none'}")
    if not st.labels.empty:
        table = Table(title="labels by class and split")
        table.add_column("class")
        for split in st.labels.columns:
            table.add_column(str(split), justify="right")
        for label, row in st.labels.iterrows():
            table.add_row(str(label), *(str(int(v)) for v in row))
        console.print(table)
    m = st.metrics
    if m.get("candidate"):
        console.print(
            f"last evaluation (round {m['round_id']}, {m['n_test']} test items): macro-F1 "
            f"{m['candidate']['macro_f1']:.4f}, accuracy {m['candidate']['accuracy']:.4f}; "
            f"promoted: {m['promoted']} ({m['gate']})"
        )
    v = st.validation
    if v:
        console.print(
            f"last intake: {v.get('rows_read', 0)} rows = {v.get('rows_accepted', 0)} accepted "
            f"+ {v.get('rows_quarantined', 0)} quarantined {v.get('quarantined_by_reason') or ''}"
        )
    if not st.rejects.empty:
        shown = st.rejects.head(10)
        console.print(f"rejected rows of the last round ({len(st.rejects)}; first {len(shown)}):")
        for row in shown.itertuples(index=False):
            where = f"{row.source_file}:{row.source_row}"
            console.print(f"  {where}  [{row.reason_code}] {row.reason}", soft_wrap=True)
    if st.flags:
        console.print(f"flagged last round: {st.flags.get('flagged', 0)}")
    if st.batch_out:
        b = st.batch_out
        console.print(
            f"batch out: {b['items']} items in {b['folder']}/ ({b['answered']} answered) "
            f"{b['by_reason']}"
        )
    if st.incoming_files:
        console.print(f"waiting in data/incoming: {', '.join(st.incoming_files)}")


@app.command()
def demo(
    rounds: Annotated[int, typer.Option(min=1, help="Rounds to run.")] = 5,
    path: Annotated[Path, typer.Option(help="Workspace folder to create.")] = Path(
        "demo-workspace"
    ),
    noise: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of wrong simulated answers.")
    ] = 0.05,
    force: Annotated[bool, typer.Option(help="Delete PATH first if it exists.")] = False,
) -> None:
    """Run rounds on a bundled real dataset with a simulated annotator."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if path.exists() and any(path.iterdir()):
        if not force:
            raise _fail(f"{path} exists; pass --force to replace it")
        shutil.rmtree(path)
    root = _setup(path)
    from flows.demo import DEFAULT_DATASET, DemoRound, run_demo

    console.print(
        f"demo on [bold]{DEFAULT_DATASET.name}[/] in {root}: {rounds} rounds, "
        f"{noise:.0%} wrong answers"
    )
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    )

    def report(row: DemoRound) -> None:
        f1 = f"{row.macro_f1:.4f}" if row.macro_f1 is not None else "  n/a "
        progress.console.print(
            f"round {row.round_id}: labels {row.labels:5d}  test macro-F1 {f1}  "
            f"flagged {row.flagged:3d}  {row.seconds:5.1f} s"
        )
        progress.advance(bar)

    from flows.workspace import WorkspaceError

    try:
        with progress, _quiet_prefect():
            bar = progress.add_task("rounds", total=rounds)
            run_demo(root, rounds=rounds, noise=noise, on_round=report)
    except WorkspaceError as exc:
        raise _fail(str(exc)) from None
    where = [
        "where to look:",
        f"  git -C {path} tag                      # one tag per round",
        f"  git -C {path} log --stat round-0002    # what a round changed",
        f"  cat {path}/reports/round.md            # the last round's report",
        f"  cd {path} && dvc metrics diff round-0002 round-{rounds:04d}",
        f"  mlflow ui --backend-store-uri sqlite:///{root}/.alloop/mlflow.db",
        f"  PREFECT_HOME={root}/.alloop/prefect prefect server start   # Prefect UI",
        "  (the tools are in .venv/bin)",
    ]
    console.print("\n" + "\n".join(where), soft_wrap=True)  # commands to copy: never wrapped


@app.command()
def simulate(
    dataset: Annotated[Path, typer.Option(help="A fully labeled table: parquet or CSV.")],
    label_column: Annotated[str, typer.Option(help="The column of true labels.")] = "label",
    id_column: Annotated[
        str | None, typer.Option(help="Each row's unique id (default: the row position).")
    ] = None,
    split_column: Annotated[
        str | None, typer.Option(help="A column of train/test (default: 25% stratified test).")
    ] = None,
    strategies: Annotated[
        str,
        typer.Option(help="Comma-separated strategies; 'default' is params.yaml's score.strategy."),
    ] = "default,random",
    seeds: Annotated[int, typer.Option(help="Campaigns per strategy.")] = 10,
    initial: Annotated[int, typer.Option(help="Random labels before the first model.")] = 100,
    batch: Annotated[int, typer.Option(help="Labels per round after that.")] = 50,
    budget: Annotated[int, typer.Option(help="Stop at this many training labels.")] = 3000,
    noise: Annotated[float, typer.Option(help="Share of wrong simulated answers.")] = 0.0,
    out: Annotated[Path, typer.Option(help="Folder for the results.")] = Path("simulation"),
    jobs: Annotated[int, typer.Option(help="Campaigns run in parallel (processes).")] = 1,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-S", help="Override a param: section.key=value")
    ] = None,
) -> None:
    """Whole campaigns per strategy and seed on a labeled dataset: does it beat random?

    Learning curves (CSV, PNG), area under the curve, labels and annotator hours to reach 98% of
    the full-data macro-F1, the ratio to random and a paired test over seeds.
    """
    _setup(out)
    from flows.simulate import SimulationSpec
    from flows.simulate import simulate as run_simulation
    from flows.workspace import WorkspaceError

    spec = SimulationSpec(
        dataset=dataset,
        label_column=label_column,
        id_column=id_column,
        split_column=split_column,
        strategies=tuple(s.strip() for s in strategies.split(",") if s.strip()),
        seeds=seeds,
        initial=initial,
        batch=batch,
        budget=budget,
        noise=noise,
        overrides=tuple(set_ or ()),
        jobs=jobs,
    )

    def report(strategy: str, seed: int, curve: Any) -> None:
        last = curve.iloc[-1] if len(curve) else None
        where = (
            f"{int(last.labels)} labels, macro-F1 {last.macro_f1:.4f}"
            if last is not None
            else "no model"
        )
        console.print(f"  {strategy} seed {seed}: {where}")

    try:
        result = run_simulation(spec, out, on_campaign=report)
    except WorkspaceError as exc:
        raise _fail(str(exc)) from None
    console.print((out / "simulation.md").read_text(), markup=False, soft_wrap=True)
    console.print(f"results in {out}/: " + ", ".join(p.name for p in result.files))


@app.command()
def pipeline(
    write: Annotated[bool, typer.Option(help="Rewrite dvc.yaml from the stage specs.")] = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Check (or rewrite) that dvc.yaml declares the stages al_round runs."""
    import yaml

    from flows.pipeline import dump_dvc_yaml, render_dvc_stages

    target = workspace.resolve() / "dvc.yaml"
    wanted = render_dvc_stages()
    if write:
        target.write_text(dump_dvc_yaml())
        console.print(f"wrote {target}")
        return
    if yaml.safe_load(target.read_text()) != wanted:
        raise _fail(f"{target} differs from the stage specs; run `alloop pipeline --write`")
    console.print(f"{target} matches the stage specs")


FormatOpt = Annotated[str, typer.Option("--format", help="table, csv or json")]
AtOpt = Annotated[
    str | None, typer.Option("--at", help="Read a past round (e.g. round-0003) through DVC.")
]


def _emit(frames: dict[str, Any], fmt: str) -> None:
    """Print frames as rich tables, CSV (formula-safe) or JSON."""
    import json

    import pandas as pd

    from tasks.catalog import csv_safe

    if fmt not in {"table", "csv", "json"}:
        raise _fail(f"--format must be table, csv or json, not {fmt!r}")
    if fmt == "json":
        payload = {
            name: json.loads(frame.to_json(orient="records")) for name, frame in frames.items()
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    for name, frame in frames.items():
        if fmt == "csv":
            if len(frames) > 1:
                sys.stdout.write(f"# {name}\n")
            sys.stdout.write(csv_safe(frame).to_csv(index=False, lineterminator="\n"))
            continue
        table = Table(title=name, show_lines=False)
        for column in frame.columns:
            table.add_column(str(column), overflow="fold")
        for row in frame.itertuples(index=False):
            table.add_row(*("" if pd.isna(v) else str(v) for v in row))
        console.print(table)


@app.command()
def history(
    item_id: Annotated[str, typer.Argument(help="The item's id.")],
    workspace: WorkspaceOpt = Path("."),
    at: AtOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """Every event of one item across rounds: issued, labeled, rejected, flagged, resolved."""
    root = _setup(workspace)
    from flows.audit import AuditError, get_item_history, read_tables

    try:
        frame = get_item_history(read_tables(root, at=at), item_id)
    except AuditError as exc:
        raise _fail(str(exc)) from None
    _emit({f"history of item {item_id}": frame}, fmt)


@app.command()
def audit(
    round_id: Annotated[int | None, typer.Option("--round", help="Only this round.")] = None,
    annotator: Annotated[str | None, typer.Option(help="Only this annotator.")] = None,
    workspace: WorkspaceOpt = Path("."),
    at: AtOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """Label events, per-annotator counts and quality, and the flags raised and resolved."""
    root = _setup(workspace)
    from flows.audit import AuditError, get_audit, read_tables

    try:
        result = get_audit(read_tables(root, at=at), round_id=round_id, annotator=annotator)
    except AuditError as exc:
        raise _fail(str(exc)) from None
    events = result.events.drop(columns=["source_sha256"])
    _emit({"annotators": result.annotators, "flags": result.flags, "events": events}, fmt)


@app.command()
def suite(
    write: Annotated[bool, typer.Option(help="Write the built-in suite file.")] = False,
    force: Annotated[bool, typer.Option(help="With --write: replace an existing file.")] = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Show (or write) the Great Expectations suite that validates incoming labels."""
    import json

    from tasks.expectations import dump_suite, get_check_order
    from tasks.validate import SUITE_FILE, get_default_suite

    target = workspace.resolve() / SUITE_FILE
    if write:
        if target.exists() and not force:
            raise _fail(f"{target} exists; pass --force to replace it (your own checks go)")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(dump_suite(get_default_suite()))
        console.print(f"wrote {target}")
        return
    if not target.exists():
        raise _fail(f"{target} is missing; `alloop suite --write` writes the built-in one")
    for position, (name, reason) in enumerate(get_check_order(json.loads(target.read_text())), 1):
        console.print(f"{position:2d}. {name}" + (f": {reason}" if reason else ""))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
