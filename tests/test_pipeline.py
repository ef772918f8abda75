"""The stage graph and the catalog are declared once: al_round, dvc.yaml, audit and rollback
are derived from them, and no code names a workspace path the catalog does not declare."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import subprocess
import sys

import yaml
from conftest import PROJECT

from flows import round as round_module
from flows.pipeline import STAGE_MODULES, STAGE_NAMES, STAGES, get_writer, render_dvc_stages
from tasks.catalog import ARTIFACTS, get_append_only, get_restored_outs
from tasks.params import Params, load_params


def test_template_dvc_yaml_is_the_rendering_of_the_stage_specs():
    on_disk = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    assert on_disk == render_dvc_stages()
    assert list(on_disk["stages"]) == list(STAGE_NAMES)


def test_the_ten_stages_of_the_design_in_order():
    assert STAGE_NAMES == (
        "validate",
        "features",
        "merge",
        "flag",
        "train",
        "evaluate",
        "health",
        "score",
        "select",
        "export",
    )


def test_al_round_runs_every_stage_of_the_pipeline():
    source = inspect.getsource(round_module.al_round)
    assert "for spec in STAGES" in source
    assert all(
        spec.module == module.__name__ for spec, module in zip(STAGES, STAGE_MODULES, strict=True)
    )


def test_template_suite_is_the_built_in_suite():
    from tasks.validate import SUITE_FILE, get_default_suite

    assert json.loads((PROJECT / SUITE_FILE).read_text()) == get_default_suite()


def test_every_read_is_an_input_of_the_round_or_written_by_an_earlier_stage():
    """So the order al_round runs the stages is an order DVC accepts, and no dep dangles."""
    written: set[str] = set()
    for spec in STAGES:
        for name in spec.reads:
            artifact = ARTIFACTS[name]
            assert artifact.role == "source" or name in written, (spec.name, name)
        for path in spec.source_files:
            assert (PROJECT / path).is_file(), (spec.name, path)
        written |= set(spec.writes)


def test_every_versioned_artifact_has_exactly_one_writer_and_inputs_none():
    for name, artifact in ARTIFACTS.items():
        writers = [spec.name for spec in STAGES if name in spec.writes]
        if artifact.role in ("source", "local"):
            assert writers == [], name
        else:
            assert len(writers) == 1, (name, writers)
            assert get_writer(name).name == writers[0]


def test_reads_across_rounds_name_real_stages_that_run_after_or_at_the_writer():
    for name, artifact in ARTIFACTS.items():
        for stage in artifact.read_later_by:
            assert stage in STAGE_NAMES, (name, stage)
            assert name not in next(s for s in STAGES if s.name == stage).reads, (name, stage)


def test_rollback_restores_every_out_but_the_append_only_ones():
    append_only = set(get_append_only())
    assert {"data/labels/ledger.parquet", "data/labels/issued.parquet"} <= append_only
    assert {"data/archive", "data/quarantine", "data/outbox"} <= append_only
    restored = set(get_restored_outs())
    assert not restored & append_only
    dvc_outs = {
        next(iter(o)) if isinstance(o, dict) else o
        for stage in render_dvc_stages()["stages"].values()
        for o in stage.get("outs", [])
    }
    assert restored | append_only == dvc_outs


def test_every_stage_reads_only_params_it_declares():
    """A stage module that reads ctx.params.<section> must list that section in dvc.yaml."""
    sections = set(Params.model_fields) | {"validate"}
    for spec, module in zip(STAGES, STAGE_MODULES, strict=True):
        tree = ast.parse(inspect.getsource(module))
        used = {
            node.attr.rstrip("_")
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "params"
            and node.attr.rstrip("_") in sections
        }
        declared = {p.split(".")[0] for p in spec.params}
        assert used <= declared, (spec.name, used - declared)


def test_every_stage_loads_and_saves_only_artifacts_its_spec_declares():
    """The names a run() passes to load, load_before and save are in its spec (the context
    also refuses them at run time; this finds them without running a round)."""
    for spec, module in zip(STAGES, STAGE_MODULES, strict=True):
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if not (node.args and isinstance(node.args[0], ast.Constant)):
                continue
            name, method = node.args[0].value, node.func.attr
            allowed = {
                "load": (*spec.reads, *spec.writes),
                "load_before": spec.reads_before,
                "save": spec.writes,
            }.get(method)
            if allowed is not None and isinstance(name, str):
                assert name in allowed, (spec.name, method, name)


def test_template_params_yaml_is_complete_and_valid():
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params = load_params(raw)
    from tasks.params import dump_params

    assert dump_params(params) == raw  # every key is written out, none is unknown


WORKSPACE_PATH = re.compile(r"^(data|models|reports)/")


def _declared(path: str) -> bool:
    """A declared path, a tracked path, a file inside a declared folder, or a prefix of one
    (the constant part of an f-string that fills in the round)."""
    for artifact in ARTIFACTS.values():
        for known in {artifact.path, artifact.tracked_path, f"{artifact.path}.dvc"}:
            shape = re.escape(known).replace(re.escape("{round}"), r"round-\d{4}")
            if re.fullmatch(shape, path.rstrip("/")):
                return True
            if artifact.kind in ("folder", "model", "pool") and path.startswith(known + "/"):
                return True
            if known.startswith(path):
                return True
    return False


def test_no_code_names_a_workspace_path_the_catalog_does_not_declare():
    found = []
    for folder in ("flows", "tasks"):
        for source in sorted((PROJECT / folder).glob("*.py")):
            tree = ast.parse(source.read_text())
            docstrings = {
                id(node.body[0].value)
                for node in ast.walk(tree)
                if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
                and node.body
                and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
            }
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and id(node) not in docstrings
                ):
                    for word in re.split(r"[\s`'\"():,]+", node.value):
                        if WORKSPACE_PATH.match(word) and not _declared(word.rstrip(".;")):
                            found.append(f"{source.name}:{node.lineno}: {word}")
    assert found == []


def test_importing_any_tasks_module_creates_nothing_and_imports_no_prefect(tmp_path):
    modules = sorted(p.stem for p in (PROJECT / "tasks").glob("*.py") if p.stem != "__init__")
    code = (
        "import sys\n"
        f"for name in {modules!r}:\n"
        "    __import__(f'tasks.{name}')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "GX_"))}
    env["HOME"] = str(home)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert list(home.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_the_architecture_page_shows_the_catalog_as_it_is():
    from flows.pipeline import render_architecture_doc

    page = (PROJECT / "docs" / "architecture.md").read_text()
    assert page == render_architecture_doc(page), "regenerate with python -m flows.pipeline"
