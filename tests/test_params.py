from __future__ import annotations

import pytest

from tasks.params import ParamsError, apply_overrides, load_params

BASE = {"project": {"classes": ["a", "b"]}}


def test_overrides_are_typed_by_yaml():
    params = load_params(
        BASE, ["train.num_leaves=63", "flag.enabled=false", "score.strategy=entropy"]
    )
    assert params.train.num_leaves == 63
    assert params.flag.enabled is False
    assert params.score.strategy == "entropy"


def test_overrides_do_not_touch_the_input():
    raw = {"project": {"classes": ["a", "b"]}, "train": {"num_leaves": 7}}
    apply_overrides(raw, ["train.num_leaves=9"])
    assert raw["train"]["num_leaves"] == 7


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.num_leafs=3", "train.num_leafs"),
        ("train.num_leaves=1", "train.num_leaves"),
        ("select.test_fraction=0.95", "test_fraction"),
        ("num_leaves=3", "section.key=value"),
        ("flag.handling=delete", "flag.handling"),
    ],
)
def test_bad_params_name_the_key(override, message):
    with pytest.raises(ParamsError, match=message):
        load_params(BASE, [override])


def test_classes_must_be_distinct():
    with pytest.raises(ParamsError, match="unique"):
        load_params({"project": {"classes": ["a", "a"]}})


def test_params_are_frozen():
    params = load_params(BASE)
    with pytest.raises(Exception, match="frozen"):
        params.train.num_leaves = 3  # type: ignore[misc]
