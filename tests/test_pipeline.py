"""The stage graph is declared once in spirit: al_round and dvc.yaml must not drift apart."""

from __future__ import annotations

import ast
import inspect

import yaml
from conftest import PROJECT

from flows import round as round_module
from flows.pipeline import STAGE_MODULES, STAGE_NAMES, STAGES, render_dvc_stages
from tasks.params import Params, load_params


def test_template_dvc_yaml_is_the_rendering_of_the_stage_specs():
    on_disk = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    assert on_disk == render_dvc_stages()
    assert list(on_disk["stages"]) == list(STAGE_NAMES)


def test_the_eight_stages_of_the_design_in_order():
    assert STAGE_NAMES == (
        "validate",
        "merge",
        "flag",
        "train",
        "evaluate",
        "score",
        "select",
        "export",
    )


def test_al_round_runs_every_stage_module_of_the_pipeline():
    source = inspect.getsource(round_module.al_round)
    assert "for module in STAGE_MODULES" in source
    assert all(module.run.name == module.STAGE.name for module in STAGE_MODULES)


def test_template_suite_is_the_built_in_suite():
    import json

    from tasks.validate import SUITE_FILE, get_default_suite

    assert json.loads((PROJECT / SUITE_FILE).read_text()) == get_default_suite()


def test_every_dep_is_source_the_pool_or_an_output_of_an_earlier_stage():
    """So the order al_round runs the stages is an order DVC accepts, and no dep dangles."""
    produced: set[str] = set()
    for spec, module in zip(STAGES, STAGE_MODULES, strict=True):
        own = f"tasks/{module.__name__.split('.')[-1]}.py"
        assert own in spec.deps, spec.name
        for dep in spec.deps:
            # code and the expectation suite: versioned files of the workspace template
            is_source = not dep.startswith("data/") and (PROJECT / dep).is_file()
            assert is_source or dep == "data/pool" or dep in produced, (spec.name, dep)
        produced |= {*spec.outs, *spec.persist, *spec.metrics}


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


def test_template_params_yaml_is_complete_and_valid():
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params = load_params(raw)
    from tasks.params import dump_params

    assert dump_params(params) == raw  # every key is written out, none is unknown
