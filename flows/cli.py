"""The ``alloop`` command line: a thin, typed layer over the flows.

Every user error ends in one line naming what and where, and exit code 1 (a bad argument: 2);
``--verbose`` adds the traceback. Anything else is a bug and says so, in one line too (exit 2).
Heavy modules (Prefect, MLflow, DVC, the stages) are imported only by the commands that use
them, and a workspace is checked (``params.yaml``) before anything is created in it.
"""

from __future__ import annotations

import logging
import shutil
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="alloop: active learning as an operated, versioned pipeline.",
    pretty_exceptions_enable=False,
)
pool_app = typer.Typer(no_args_is_help=True, help="The pool of unlabeled items.")
app.add_typer(pool_app, name="pool")
labelstudio_app = typer.Typer(
    no_args_is_help=True, help="Label Studio: the project the batches go to and answers come from."
)
app.add_typer(labelstudio_app, name="labelstudio")
console = Console()
log = logging.getLogger("alloop")

LABEL_LIKE = {"label", "labels", "target", "class", "y"}

WorkspaceOpt = Annotated[
    Path, typer.Option("--workspace", "-w", help="The workspace (default: current folder).")
]

TeamApiOpt = Annotated[
    str, typer.Option(help="The team's Prefect API, e.g. http://prefect.internal:4200/api.")
]

#: Exceptions that are the user's to fix, by module and name: checked through ``sys.modules``
#: so that reporting an error never imports a module (an exception of a module that was never
#: imported cannot have been raised).
USER_ERRORS = (
    ("flows.workspace", "WorkspaceError"),
    ("flows.workspace", "WorkspaceBusy"),
    ("tasks.params", "ParamsError"),
    ("flows.audit", "AuditError"),
    ("flows.labelstudio", "LabelStudioError"),
    ("flows.versioning", "VersioningError"),
    ("tasks.parsing", "LabelFileError"),
    ("tasks.executor", "ExecutorError"),
    ("yaml", "YAMLError"),
    # a revision that does not exist (--at): DVC's and scmrepo's own classes
    ("dvc.scm", "RevError"),
    ("scmrepo.exceptions", "RevError"),
)

_options = {"verbose": False}


def _user_error_types() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [
        FileNotFoundError,
        PermissionError,
        NotADirectoryError,
        IsADirectoryError,
    ]
    for module, name in USER_ERRORS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(getattr(loaded, name, None), type):
            found.append(getattr(loaded, name))
    return tuple(found)


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def describe_error(exc: BaseException) -> str:
    """A user error as one line: what went wrong and where."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return _one_line(str(exc)) or type(exc).__name__


def _say_error(message: str) -> None:
    # plain text: rich would read [brackets] in a message as markup and wrap it at 80 columns;
    # on stderr, so that an error never lands in output redirected to a file (audit --format)
    sys.stdout.flush()
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def _workspace(workspace: Path) -> Path:
    """The workspace's root, checked before anything is created or imported: environment for
    Prefect, MLflow and DVC set (their state folders are created when a flow runs)."""
    from flows import runtime
    from flows.workspace import check_workspace

    root = check_workspace(workspace)
    runtime.configure(root, create_state=False)
    return root


def _fail(message: str) -> typer.Exit:
    _say_error(message)
    return typer.Exit(code=1)


def _quiet_prefect():  # type: ignore[no-untyped-def]
    # the per-flow heartbeat thread costs ~1 s per flow run; the env var cannot express None
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


class _UserErrorFilter(logging.Filter):
    """Keeps the traceback of a user error that ends a flow off the console (the CLI says it
    in one line; --verbose shows it): Prefect logs "Encountered exception" with the traceback
    and "Finished in state Failed(...)". The records still reach Prefect's API."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if record.exc_info and record.exc_info[1] is not None:
            return not isinstance(record.exc_info[1], _user_error_types())
        message = record.getMessage()
        return not (
            message.startswith("Finished in state Failed")
            and any(f"{name}:" in message for _, name in USER_ERRORS)
        )


def _before_flow(root: Path) -> None:
    """Just before a flow runs: Prefect's state folder, and the workspace's local server if
    ``alloop serve`` runs one (no temporary API to start then)."""
    from flows import runtime

    api_url = runtime.prepare_flow_run(root)
    if api_url:
        log.info("Prefect API: %s", api_url)
    if not _options["verbose"]:
        import prefect  # noqa: F401  (sets up Prefect's console handlers)

        handlers = [*logging.getLogger("prefect").handlers, *logging.getLogger().handlers]
        for handler in handlers:
            if not any(isinstance(f, _UserErrorFilter) for f in handler.filters):
                handler.addFilter(_UserErrorFilter())


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="More log lines; a traceback on errors.")
    ] = False,
) -> None:
    _options["verbose"] = verbose
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    # alloop's own informational lines (a server started, a campaign done, a file already
    # consumed) are for the operator; the libraries' are only with --verbose
    for name in ("flows", "tasks"):
        logging.getLogger(name).setLevel(logging.INFO)


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
    drop_column: Annotated[
        list[str] | None,
        typer.Option(help="A pool column to leave out (not a feature); repeatable."),
    ] = None,
) -> None:
    """Create a workspace and import the pool.

    A pool column that holds the class names (or predicts --label-column exactly) is refused:
    as a feature it would give the answers away. Name it with --label-column (simulations) or
    leave it out with --drop-column.
    """
    from flows import runtime
    from flows.workspace import init_workspace, read_table_file

    runtime.configure(path, create_state=False)  # the workspace does not exist yet
    names = [c.strip() for c in classes.split(",") if c.strip()]
    raw = read_table_file(pool)
    dropped = set(drop_column or ())
    looks_like_labels = [
        c for c in raw.columns if str(c).lower() in LABEL_LIKE and c not in dropped
    ]
    if label_column is None and looks_like_labels:
        log.warning(
            "the pool has a column %s that looks like labels; it will be used as a "
            "feature. If it holds true labels (simulation only), pass --label-column; "
            "otherwise --drop-column leaves it out.",
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
        drop_columns=tuple(drop_column or ()),
    )
    console.print(
        f"workspace ready at [bold]{escape(str(catalog.root))}[/]; "
        f"next: alloop round -w {escape(str(path))}"
    )


@app.command()
def clone(
    source: Annotated[str, typer.Argument(help="The workspace's git repository (URL or path).")],
    path: Annotated[Path, typer.Argument(help="Folder of the recovered workspace.")],
) -> None:
    """Recover a workspace on a new machine: git clone, then dvc pull from its remote."""
    import os

    from flows.runtime import QUIET

    os.environ.update(QUIET)  # no Prefect state to set up: git clone wants an empty folder
    from flows.workspace import clone_workspace

    catalog = clone_workspace(source, path)
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
    dask_address: Annotated[
        str | None,
        typer.Option(
            help="Score the pool on this Dask scheduler's workers, e.g. tcp://10.0.0.5:8786 "
            "(default: score.executor in params.yaml)."
        ),
    ] = None,
) -> None:
    """Run one round: validate, merge, flag, train, evaluate, score, select, export, record.

    A round with nothing new (no file in data/incoming, no new pool items) is skipped and says
    so, unless --force; an interrupted round is resumed.
    """
    root = _workspace(workspace)
    from flows.recovery import check_no_interrupted_rollback, get_idle_reason, repair_after_crash
    from flows.workspace import check_code, hold_workspace
    from tasks.catalog import Catalog
    from tasks.executor import get_executor_overrides

    # held before Prefect starts, so a second command fails at once; and a round with nothing
    # to do answers from git and the files, in seconds, without starting Prefect at all
    with hold_workspace(root, "round"):
        catalog = Catalog(root)
        check_code(root)
        check_no_interrupted_rollback(catalog)
        # a typo is named now, not after Prefect started
        params = catalog.read_params(get_executor_overrides(dask_address))
        pulled = False
        if not force:
            # the git tag a crash may have left missing; the MLflow link, if any, is repaired
            # by the next round that runs (its flow repairs everything first)
            repair_after_crash(catalog, mlflow=False)
            if params.labelstudio.connected:  # answers given in Label Studio are work
                from flows import labelstudio

                labelstudio.pull_into_incoming(catalog, params)
                pulled = True
            idle = get_idle_reason(catalog)
            if idle is not None:
                console.print(idle, soft_wrap=True, markup=False)
                return
        _before_flow(root)
        from flows.round import al_round

        with _quiet_prefect():
            result = al_round(
                str(root),
                started_at=started_at,
                force=force,
                labelstudio_pulled=pulled,
                dask_address=dask_address,
            )
    if result.skipped:
        console.print(result.skipped)
        return
    console.print(f"[bold]round-{result.round_id:04d}[/] recorded as {result.commit[:10]}")
    console.print(catalog.load("round_report") or "", markup=False)


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
    root = _workspace(workspace)
    from flows import runtime
    from flows.schedule import get_deployment_name, serve_rounds
    from flows.workspace import hold_workspace

    runtime.configure(root)
    console.print(
        f"serving [bold]al_round/{get_deployment_name(root)}[/] for {root}: '{cron}' "
        f"({timezone}), Prefect API {api_url or 'local (started now)'}; Ctrl-C stops"
    )
    with hold_workspace(root, "serve", lock_name="serve.lock"):
        serve_rounds(root, cron=cron, timezone=timezone, api_url=api_url)
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
    root = _workspace(workspace)
    from flows import runtime
    from flows.schedule import deploy_rounds

    runtime.configure(root)
    name, created = deploy_rounds(root, pool=pool, cron=cron, timezone=timezone, api_url=api_url)
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

    exec_worker(pool, api_url=api_url, run_once=run_once)


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
    root = _workspace(workspace)
    from flows.workspace import hold_workspace

    overrides = tuple(set_ or ())
    with hold_workspace(root, "rerun"):
        _before_flow(root)
        from flows.rerun import al_rerun

        with _quiet_prefect():
            result = al_rerun(str(root), round_id, overrides)
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
    root = _workspace(workspace)
    from flows.workspace import hold_workspace

    with hold_workspace(root, "rollback"):
        _before_flow(root)
        from flows.rollback import al_rollback

        with _quiet_prefect():
            result = al_rollback(str(root), to_round)
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
def resume(workspace: WorkspaceOpt = Path(".")) -> None:
    """Let nightly rounds run again after the stop advice paused them (stop.action: pause)."""
    root = _workspace(workspace)
    from flows.recovery import get_pause_reason, resume_after_stop
    from tasks.catalog import Catalog

    catalog = Catalog(root)
    paused = get_pause_reason(catalog)
    after = resume_after_stop(catalog)
    if paused is None:
        console.print(
            f"rounds were not paused; a stop advice of round-{after:04d} or earlier will not "
            "pause them"
        )
    else:
        console.print(
            f"resumed: rounds run again; the stop advice of round-{after:04d} is set aside "
            "(a later round's advice pauses them again)"
        )


@app.command()
def status(workspace: WorkspaceOpt = Path(".")) -> None:
    """The current round, labels by class and split, the last metrics, the batch that is out."""
    root = _workspace(workspace)
    from flows.status import (
        get_batch_rounds,
        get_drift_lines,
        get_labelstudio_lines,
        get_rating_line,
        get_status,
    )
    from tasks.catalog import Catalog
    from tasks.summaries import format_counts

    catalog = Catalog(root)
    st = get_status(catalog)
    # what a person wants to know first: is the model good, should labeling stop, did the
    # pool drift (plain text: class names may hold [brackets])
    for line in [
        get_rating_line(st.summaries.health, st.stop),
        *get_drift_lines(st.summaries.health),
    ]:
        console.print(line, markup=False, soft_wrap=True, highlight=False)
    console.print(f"[bold]workspace[/] {escape(str(root))}")
    upgrade = (
        f" (differs: `alloop upgrade -w {root}` moves it to the running one)"
        if st.workspace_version.code_hash != st.running_version.rsplit("+", 1)[-1]
        else ""
    )
    console.print(
        f"alloop: workspace {st.workspace_version}, running {st.running_version}{upgrade}",
        markup=False,
        soft_wrap=True,
    )
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
            table.add_row(escape(str(label)), *(str(int(v)) for v in row))
        console.print(table)
    e, v, f = st.summaries.evaluate, st.summaries.validate, st.summaries.flag
    if e is not None and e.candidate:
        scores = (
            f"MAP {e.candidate['map']:.4f}, micro-F1 {e.candidate['micro_f1']:.4f}, macro-F1 "
            f"{e.candidate['macro_f1']:.4f}"
            if "map" in e.candidate  # label sets
            else f"macro-F1 {e.candidate['macro_f1']:.4f}, accuracy {e.candidate['accuracy']:.4f}"
        )
        console.print(
            f"last evaluation (round {e.round_id}, {e.n_test} test items): {scores}; "
            f"promoted: {e.promoted} ({e.gate})"
        )
    if v is not None:
        console.print(
            f"last intake: {v.rows_read} rows = {v.rows_accepted} accepted "
            f"+ {v.rows_quarantined} quarantined"
            + (f" ({format_counts(v.quarantined_by_reason)})" if v.quarantined_by_reason else "")
            + (f" + {v.rows_already_consumed} already consumed" if v.rows_already_consumed else "")
        )
    if not st.rejects.empty:
        shown = st.rejects.head(10)
        console.print(f"rejected rows of the last round ({len(st.rejects)}; first {len(shown)}):")
        for row in shown.itertuples(index=False):
            where = f"{row.source_file}:{row.source_row}"
            console.print(
                f"  {where}  [{row.reason_code}] {row.reason}", soft_wrap=True, markup=False
            )
    if f is not None:
        kept = (
            f" ({f.confirmed_kept} confirmed labels doubted again, kept)"
            if f.confirmed_kept
            else ""
        )
        console.print(f"flagged last round: {f.flagged}{kept}")
    if st.batch_out:
        b = st.batch_out
        console.print(
            f"batch out: {b['items']} items in {b['folder']}/ ({b['answered']} answered): "
            f"{format_counts(b['by_reason'])}"
        )
    batches = get_batch_rounds(catalog.load("issued"), catalog.load("ledger"), last=5)
    if len(batches) > 1:
        table = Table(title="batches of the last rounds")
        for column in batches.columns:
            table.add_column(column, justify="left" if column == "round" else "right")
        for row in batches.itertuples(index=False):
            table.add_row(*(str(v) for v in row))
        console.print(table)
    for line in get_labelstudio_lines(catalog):
        console.print(line, markup=False, soft_wrap=True, highlight=False)
    if st.incoming_files:
        console.print(f"waiting in data/incoming: {', '.join(st.incoming_files)}", markup=False)
    if st.unlabeled_left == 0:
        console.print(
            f"pool: [bold]exhausted[/]: all {st.pool_items} items have been issued; "
            f"`alloop pool add FILE -w {root}` adds new ones"
        )
    else:
        console.print(
            f"pool: {st.unlabeled_left} of {st.pool_items} items never issued (left to label)"
        )


@app.command()
def report(
    workspace: WorkspaceOpt = Path("."),
    round_id: Annotated[
        int | None,
        typer.Option("--round", min=1, help="A recorded round (default: the last one)."),
    ] = None,
) -> None:
    """Print the path of the round page: one HTML file with plots, opens offline.

    The last round's is reports/round.html. A recorded round's (--round N) is the one its tag
    pins, read through DVC into .alloop/pages/ (the workspace's files stay as they are); a
    round from before pages gets one rendered from its recorded files. E.g.
    `xdg-open "$(alloop report --round 3)"`.
    """
    root = _workspace(workspace)
    from flows.report import ReportError, get_round_page

    try:
        page = get_round_page(root, round_id)
    except ReportError as exc:
        raise _fail(str(exc)) from None
    # the path alone on standard output, so that it can be handed to a browser
    sys.stdout.write(f"{page.path}\n")
    sys.stderr.write(f"{page.how}\n")


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
    from flows import runtime

    runtime.configure(path)
    root = path.resolve()
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

    with progress, _quiet_prefect():
        bar = progress.add_task("rounds", total=rounds)
        run_demo(root, rounds=rounds, noise=noise, on_round=report)
    lines = "\n".join(get_where_to_look(root, rounds))
    # commands to copy: never wrapped, no markup
    console.print("\nwhere to look:\n" + lines, soft_wrap=True, markup=False, highlight=False)


def get_where_to_look(root: Path, rounds: int) -> list[str]:
    """The demo's closing commands, runnable exactly as printed from any folder and shell:
    absolute paths, and the tools of this alloop's own environment (not whatever is on PATH)."""
    import shlex

    bin_dir = Path(sys.executable).parent
    ws = shlex.quote(str(root))
    tool = {name: shlex.quote(str(bin_dir / name)) for name in ("dvc", "mlflow", "prefect")}
    last = f"round-{rounds:04d}"
    first = "round-0002" if rounds >= 2 else last
    state = shlex.quote(str(root / ".alloop"))
    return [
        f"  git -C {ws} tag                      # one tag per round",
        f"  git -C {ws} log --stat {first}    # what a round changed",
        f"  cat {shlex.quote(str(root / 'reports' / 'round.md'))}   # the last round's report",
        f"  cd {ws} && {tool['dvc']} metrics diff {first} {last}",
        f"  {tool['mlflow']} ui --backend-store-uri sqlite:///{root}/.alloop/mlflow.db",
        f"  PREFECT_HOME={state}/prefect {tool['prefect']} server start   # Prefect UI",
    ]


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
    annotators: Annotated[
        int,
        typer.Option(
            min=1,
            help="Simulated annotators, their noise spread evenly over 0.5-1.5 x --noise; "
            "each item goes to one of them in turn, a relabel to one who has not voted on it.",
        ),
    ] = 1,
    task: Annotated[
        str,
        typer.Option(
            help="multiclass (one class per item) or multilabel (the label column holds sets: "
            "lists, or texts joined by project.label_separator)."
        ),
    ] = "multiclass",
    metric: Annotated[
        str | None,
        typer.Option(
            help="The test score followed: macro_f1 or accuracy; for label sets map, micro_f1 "
            "or macro_f1 (default: macro_f1, map for label sets)."
        ),
    ] = None,
    target: Annotated[
        float | None,
        typer.Option(help="The score to reach, absolute (default: 98% of the full-data score)."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for the results.")] = Path("simulation"),
    jobs: Annotated[int, typer.Option(help="Campaigns run in parallel (processes).")] = 1,
    dask_address: Annotated[
        str | None,
        typer.Option(
            help="Run the campaigns on this Dask scheduler's workers, one task each (they "
            "must see --out at the same path), instead of --jobs processes."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-S", help="Override a param: section.key=value")
    ] = None,
) -> None:
    """Whole campaigns per strategy and seed on a labeled dataset: does it beat random?

    Learning curves (CSV, PNG), area under the curve, labels and annotator hours to reach the
    target (98% of the full-data score, or --target), the ratio to random and a paired test over
    seeds.
    """
    from flows import runtime

    runtime.configure(out)
    from flows.simulate import SimulationSpec
    from flows.simulate import simulate as run_simulation

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
        annotators=annotators,
        overrides=tuple(set_ or ()),
        jobs=jobs,
        dask_address=dask_address,
        task=task,
        metric=metric,
        target=target,
    )

    def report(strategy: str, seed: int, curve: Any) -> None:
        name = spec.score_metric
        where = (
            f"{int(curve['labels'].iloc[-1])} labels, {name} {curve[name].iloc[-1]:.4f}"
            if len(curve)
            else "no model"
        )
        console.print(f"  {strategy} seed {seed}: {where}")

    result = run_simulation(spec, out, on_campaign=report)
    console.print((out / "simulation.md").read_text(), markup=False, soft_wrap=True)
    console.print(f"results in {out}/: " + ", ".join(p.name for p in result.files), markup=False)


@app.command()
def pipeline(
    write: Annotated[bool, typer.Option(help="Rewrite dvc.yaml from the stage specs.")] = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Check (or rewrite) that dvc.yaml declares the stages al_round runs."""
    target = _workspace(workspace) / "dvc.yaml"
    import yaml

    from flows.pipeline import dump_dvc_yaml, render_dvc_stages

    wanted = render_dvc_stages()
    if write:
        target.write_text(dump_dvc_yaml())
        console.print(f"wrote {target}", markup=False)
        return
    if yaml.safe_load(target.read_text()) != wanted:
        raise _fail(f"{target} differs from the stage specs; run `alloop pipeline --write`")
    console.print(f"{target} matches the stage specs", markup=False)


FormatOpt = Annotated[str, typer.Option("--format", help="table, csv or json")]
AtOpt = Annotated[
    str | None, typer.Option("--at", help="Read a past round (e.g. round-0003) through DVC.")
]
FORMATS = ("table", "csv", "json")


def _emit(frames: dict[str, Any], fmt: str, *, out: Path | None = None) -> None:
    """Print frames as rich tables, CSV (formula-safe; one table) or JSON; or, with ``out``,
    write each frame to ``out/NAME.csv`` (or ``.json``), one table per file."""
    import json

    import pandas as pd

    from tasks.catalog import csv_safe

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, frame in frames.items():
            if fmt == "json":
                target = out / f"{name}.json"
                target.write_text(frame.to_json(orient="records", indent=2) + "\n")
            else:
                target = out / f"{name}.csv"
                csv_safe(frame).to_csv(target, index=False, lineterminator="\n")
            console.print(f"wrote {target} ({len(frame)} rows)", markup=False, soft_wrap=True)
        return
    if fmt == "json":
        payload = {
            name: json.loads(frame.to_json(orient="records")) for name, frame in frames.items()
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    if fmt == "csv":
        (frame,) = frames.values()  # one table: _pick_tables made sure
        sys.stdout.write(csv_safe(frame).to_csv(index=False, lineterminator="\n"))
        return
    for name, frame in frames.items():
        table = Table(title=name, show_lines=False)
        for column in frame.columns:
            numeric = pd.api.types.is_numeric_dtype(frame[column].dtype)
            table.add_column(str(column), overflow="fold", justify="right" if numeric else "left")
        for row in frame.itertuples(index=False):
            table.add_row(*(escape(get_cell_text(v)) for v in row))
        console.print(table)


def get_cell_text(value: Any) -> str:
    """A value as a table shows it: missing is blank, a whole number has no ``.0`` (a round id
    in a column that also holds NaN is stored as a float), other floats keep 4 significant
    digits (a label quality of 0.0002719370011567098 is 0.0002719). CSV and JSON keep every
    digit."""
    import numpy as np
    import pandas as pd

    if isinstance(value, str):
        return value
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return ""
    if isinstance(value, float | np.floating):
        number = float(value)
        if number.is_integer():
            return str(int(number))
        return f"{number:.4g}" if abs(number) < 1e4 else f"{number:.0f}"
    return str(value)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise typer.BadParameter(
            f"must be one of {', '.join(FORMATS)}, not {fmt!r}", param_hint="'--format'"
        )


@app.command()
def history(
    item_id: Annotated[str, typer.Argument(help="The item's id.")],
    workspace: WorkspaceOpt = Path("."),
    at: AtOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """Every event of one item across rounds: issued, labeled, rejected, flagged, resolved."""
    _check_format(fmt)
    root = _workspace(workspace)
    from flows.audit import get_item_history, read_tables

    frame = get_item_history(read_tables(root, at=at), item_id)
    _emit({f"history of item {item_id}": frame}, fmt)


AUDIT_TABLES = ("annotators", "flags", "events")


@app.command()
def audit(
    round_id: Annotated[int | None, typer.Option("--round", help="Only this round.")] = None,
    annotator: Annotated[str | None, typer.Option(help="Only this annotator.")] = None,
    workspace: WorkspaceOpt = Path("."),
    at: AtOpt = None,
    fmt: FormatOpt = "table",
    table: Annotated[
        str | None, typer.Option(help="Only this table: annotators, flags or events.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write each table to its own file, OUT/annotators.csv etc."),
    ] = None,
) -> None:
    """Label events, per-annotator counts and quality, and the flags raised and resolved.

    With --format csv, one table per file: all three with --out DIR,
    or one to standard output with --table NAME.
    """
    _check_format(fmt)
    if table is not None and table not in AUDIT_TABLES:
        raise typer.BadParameter(
            f"must be one of {', '.join(AUDIT_TABLES)}, not {table!r}", param_hint="'--table'"
        )
    if fmt == "csv" and table is None and out is None:
        raise typer.BadParameter(
            "CSV holds one table: add --table annotators|flags|events (to standard output) "
            "or --out DIR (one file per table)",
            param_hint="'--format csv'",
        )
    root = _workspace(workspace)
    from flows.audit import get_audit, read_tables

    result = get_audit(read_tables(root, at=at), round_id=round_id, annotator=annotator)
    frames = {
        "annotators": result.annotators,
        "flags": result.flags,
        "events": result.events.drop(columns=["source_sha256"]),
    }
    if table is not None:
        frames = {table: frames[table]}
    _emit(frames, fmt, out=out)


@app.command()
def upgrade(workspace: WorkspaceOpt = Path(".")) -> None:
    """Move a workspace to this alloop's code, as one commit of its own.

    Its flows/ and tasks/ become this alloop's and dvc.yaml is regenerated; dvc.lock stays
    as it is (it records the code that produced the outputs; the next round records the new
    code). Refused while a round or a rollback is unfinished or with uncommitted changes.
    """
    root = _workspace(workspace)
    from flows.workspace import upgrade_workspace

    result = upgrade_workspace(root)
    if result.commit is None:
        console.print(f"{root} already runs this alloop ({result.to_version})", markup=False)
        return
    console.print(
        f"upgraded {root}: alloop {result.from_version} -> {result.to_version}, "
        f"{len(result.changed)} files, commit {result.commit[:10]}; dvc.lock unchanged",
        markup=False,
        soft_wrap=True,
    )


@pool_app.command("add")
def pool_add(
    file: Annotated[Path, typer.Argument(help="New items: parquet or CSV, the pool's columns.")],
    workspace: WorkspaceOpt = Path("."),
    id_column: Annotated[str, typer.Option(help="Column with each item's unique id.")] = "item_id",
    drop_column: Annotated[
        list[str] | None, typer.Option(help="A column to leave out; repeatable.")
    ] = None,
) -> None:
    """Add unlabeled items to the pool, as a commit of their own; the next round scores them.

    The file needs the pool's columns with compatible types and ids that are new; it becomes
    data/pool/items-NNNN.parquet (DVC), committed as "pool add: N items from FILE".
    """
    root = _workspace(workspace)
    from flows.workspace import add_to_pool, read_table_file

    raw = read_table_file(file)
    result = add_to_pool(
        root,
        raw,
        source=file.name,
        id_column=id_column,
        drop_columns=tuple(drop_column or ()),
    )
    console.print(
        f"added {result.items} items to the pool ({result.pool_items} now) as "
        f"{result.file.relative_to(root)}, commit {result.commit[:10]}; the next `alloop round` "
        "scores them",
        markup=False,
        soft_wrap=True,
    )


@labelstudio_app.command("connect")
def labelstudio_connect(
    url: Annotated[str, typer.Option(help="The Label Studio server, e.g. http://127.0.0.1:8080.")],
    workspace: WorkspaceOpt = Path("."),
    project: Annotated[
        int | None, typer.Option(help="Adopt this existing project (its id in the URL).")
    ] = None,
    title: Annotated[
        str | None,
        typer.Option(
            help="Adopt the project of this title, or create it (default: alloop and the "
            "workspace's folder name)."
        ),
    ] = None,
) -> None:
    """Connect the workspace to a Label Studio project, as a commit of its own.

    The project gets the workspace's labeling config (labelstudio/config.xml, written from the
    classes the first time; edit it and connect again to change it). The API token comes from
    the environment variable ALLOOP_LABELSTUDIO_TOKEN (labelstudio.token_env) or the file
    .alloop/labelstudio-token, never from a versioned file. From then on every round pulls the
    new answers before it starts and pushes its batch when it ends.
    """
    if project is not None and title is not None:
        raise _fail("give --project or --title, not both")
    root = _workspace(workspace)
    from flows.labelstudio import connect

    done = connect(root, url=url, project_id=project, title=title)
    console.print(
        f"{'created' if done.created else 'adopted'} project {done.project_id} "
        f"({done.title!r}) at {done.url}; labeling config {done.config_file.relative_to(root)}; "
        f"commit {done.commit[:10]}. Each `alloop round` now pulls the answers and pushes "
        "its batch.",
        markup=False,
        soft_wrap=True,
    )


@labelstudio_app.command("pull")
def labelstudio_pull(workspace: WorkspaceOpt = Path(".")) -> None:
    """Fetch the answers given since the last pull into data/incoming/ now (a round does it
    by itself); the next round consumes them."""
    root = _workspace(workspace)
    from flows import labelstudio
    from tasks.catalog import Catalog

    catalog = Catalog(root)
    params = catalog.read_params()
    record = labelstudio.pull_into_incoming(catalog, params)
    if not record.pull_ok:
        raise _fail(f"pull failed: {record.pull_error}")
    console.print(
        f"pulled {record.pulled_tasks} tasks with new answers into data/incoming: "
        + ", ".join(record.pull_files)
        if record.pull_files
        else "nothing new in Label Studio",
        markup=False,
        soft_wrap=True,
    )


@labelstudio_app.command("push")
def labelstudio_push(workspace: WorkspaceOpt = Path(".")) -> None:
    """Send the last round's batch (and any earlier one whose push failed) to the project now
    (a round does it by itself); tasks the project holds already are not sent again."""
    root = _workspace(workspace)
    from flows import labelstudio, versioning
    from tasks.catalog import Catalog

    catalog = Catalog(root)
    committed = versioning.committed_round(root)
    if committed < 1:
        raise _fail("no round has run yet: there is no batch to push")
    record = labelstudio.push(
        catalog, catalog.read_params(), labelstudio.read_record(catalog), committed
    )
    labelstudio.save_state(catalog, record)
    if not record.push_ok:
        raise _fail(f"push failed: {record.push_error}")
    for name, counts in record.pushed.items():
        console.print(
            f"{name}: {counts['sent']} tasks sent, {counts['already_there']} already in the "
            "project",
            markup=False,
        )


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

    target = _workspace(workspace) / SUITE_FILE
    if write:
        if target.exists() and not force:
            raise _fail(f"{target} exists; pass --force to replace it (your own checks go)")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(dump_suite(get_default_suite()))
        console.print(f"wrote {target}", markup=False)
        return
    if not target.exists():
        raise _fail(f"{target} is missing; `alloop suite --write` writes the built-in one")
    for position, (name, reason) in enumerate(get_check_order(json.loads(target.read_text())), 1):
        console.print(f"{position:2d}. {name}" + (f": {reason}" if reason else ""))


def _is(exc: BaseException, name: str) -> bool:
    # typer vendors its own click: its exceptions are told by class name, not imported
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def main(argv: list[str] | None = None) -> None:
    """The ``alloop`` entry point: runs a command, and turns every error into one line and an
    exit code (1: the user's to fix; 2: a bad argument, or a bug, with --verbose for the
    traceback; 130: interrupted)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=args, prog_name="alloop", standalone_mode=False)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        code = _report(
            exc, verbose=_options["verbose"] or any(a in ("-v", "--verbose") for a in args)
        )
    sys.exit(code if isinstance(code, int) else 0)


def _report(exc: Exception, *, verbose: bool) -> int:
    """Say what went wrong in one line; returns the exit code."""
    if _is(exc, "NoArgsIsHelpError"):
        exc.show()  # type: ignore[attr-defined]
        return int(exc.exit_code)  # type: ignore[attr-defined]
    if _is(exc, "UsageError"):
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "alloop"
        _say_error(f"{where}: {_one_line(exc.format_message())} (see `{where} --help`)")  # type: ignore[attr-defined]
        return int(exc.exit_code)  # type: ignore[attr-defined]
    if _is(exc, "ClickException"):
        _say_error(_one_line(exc.format_message()))  # type: ignore[attr-defined]
        return int(exc.exit_code)  # type: ignore[attr-defined]
    if _is(exc, "Abort"):
        return 130
    if verbose:
        traceback.print_exc()
    if isinstance(exc, _user_error_types()):
        _say_error(describe_error(exc))
        return 1
    _say_error(
        f"internal error: {type(exc).__name__}: {_one_line(str(exc))[:300]}; "
        "run with --verbose for the traceback"
    )
    return 2


if __name__ == "__main__":
    main()
