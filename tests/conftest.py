"""Shared fixtures. Every test that writes works in its own temporary folder: never the checkout.

Prefect, MLflow, DVC and Great Expectations are told here, before any of them is imported,
to keep their state in a temporary folder and to send nothing home.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_STATE = Path(tempfile.mkdtemp(prefix="alloop-tests-"))
os.environ.update(
    {
        "PREFECT_HOME": str(_STATE / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GX_ANALYTICS_ENABLED": "False",
    }
)

PROJECT = Path(__file__).resolve().parent.parent
DATASETS = PROJECT / "data" / "datasets"
SHARED_DATA = PROJECT.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
BIN = Path(sys.executable).parent


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command-line tool (git, dvc, alloop) as an operator would, with the venv on PATH."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["COLUMNS"] = "200"  # rich would wrap messages at 80 columns
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def make_satimage_workspace(root: Path):
    """A workspace on the bundled satimage pool, with its true labels for the simulated
    annotator, and small batches (seed 150, then 100 a round) so rounds are quick."""
    from flows.demo import load_pmlb
    from flows.workspace import init_workspace

    raw, classes = load_pmlb(DATASETS / "satimage.parquet")
    catalog = init_workspace(
        root,
        pool=raw,
        id_column="item_id",
        classes=classes,
        label_column="label",
        overrides=("select.seed_size=150", "select.batch_size=100"),
    )
    return catalog, classes


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API for the whole session (about 10 s to start)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


#: Test lanes (STYLE.md, principle 10). ``make test-fast`` runs every lane but flow.
LANES = ("unit", "contract", "property", "flow")
#: Modules whose tests are all of a lane, whatever they use.
CONTRACT_MODULES = {"test_strategies", "test_pipeline"}
PROPERTY_MODULES = {"test_hostile_files", "test_validate_properties"}
#: Names whose use in a test or in a fixture it uses makes it a flow test: it builds a
#: workspace, runs a round, or runs alloop as a command.
FLOW_NAMES = {
    "prefect_api",
    "init_workspace",
    "make_satimage_workspace",
    "al_round",
    "run_cli",
    "Popen",
}


def _names(code) -> set[str]:
    """Global and attribute names a code object uses, nested functions included."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _names(const)
    return names


def get_lane(item: pytest.Item) -> str:
    """The lane of a test: its own lane marker, else by what it uses, else by its module."""
    for lane in LANES:
        if item.get_closest_marker(lane):
            return lane
    funcs = [getattr(item, "obj", None)]
    infos = getattr(item, "_fixtureinfo", None)
    fixtures = getattr(item, "fixturenames", ())
    for name in fixtures:
        funcs += [d.func for d in (infos.name2fixturedefs.get(name, ()) if infos else ())]
    used = set(fixtures)
    for func in funcs:
        code = getattr(getattr(func, "__wrapped__", func), "__code__", None)
        if code is not None:
            used |= _names(code)
    if used & FLOW_NAMES:
        return "flow"
    module = getattr(item, "module", None)
    module = module.__name__.rpartition(".")[2] if module else ""
    if module in PROPERTY_MODULES or hasattr(getattr(item, "obj", None), "hypothesis"):
        return "property"
    if module in CONTRACT_MODULES:
        return "contract"
    return "unit"


def pytest_collection_modifyitems(config, items):  # noqa: ARG001
    """Every test gets a lane marker, so a new test needs no marking by hand."""
    for item in items:
        if not any(item.get_closest_marker(lane) for lane in LANES):
            item.add_marker(get_lane(item))


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    shutil.rmtree(_STATE, ignore_errors=True)
