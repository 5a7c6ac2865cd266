"""Recipe loading and validation, and the column naming that maps a table's columns to image types / regions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from node.errors import ConfigError
from node.research.columns import choose_columns, describe_column
from node.research.recipe import available_recipes, load_recipe


def test_every_shipped_recipe_loads() -> None:
    assert {"yonsei", "her2-three-tier", "peritumoral-shells"} <= set(available_recipes())
    her2 = load_recipe("her2-three-tier")
    assert her2.batch_column == "scanner" and her2.icc_threshold == 0.75
    assert [s.kind for s in her2.selection] == ["wilcoxon", "boruta"]
    assert [t.positive for t in her2.tasks] == [("positive",), ("low",)]
    shells = load_recipe("peritumoral-shells")
    assert shells.compare == ("intratumoral", "intratumoral+shells")
    assert load_recipe("yonsei").grid == "quick"


def _write(tmp_path: Path, **changes: object) -> Path:
    doc = yaml.safe_load(load_recipe("her2-three-tier").source.read_text())
    doc.update(changes)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"colour": "blue"}, "unknown field(s) colour"),
        ({"images": ["original", "gradient"]}, "'images' must include original"),
        ({"regions": ["tumour", "shell99mm"]}, "'regions' must include tumour"),
        ({"tasks": [{"task": "her2-3tier", "positive": ["high"], "negative": ["zero"]}]}, "class(es) high not in"),
        ({"tasks": [{"task": "ki67"}]}, "task 'ki67' is not one of"),
        ({"classifiers": [{"kind": "deep_net"}]}, "method/kind must be one of"),
        ({"stability": {"method": "icc", "threshold": 1.5}}, "ICC threshold must be in (0, 1)"),
        ({"harmonisation": {"method": "combat"}}, "'harmonisation' must be null or"),
        ({"grid": "quick"}, "'grid' replaces 'selection' and 'classifiers'"),
        ({"compare": ["all", "nothing"]}, "'compare' must name two feature sets"),
    ],
)
def test_bad_recipes_are_refused_with_the_field_named(tmp_path: Path, changes: dict[str, object],
                                                      message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(_write(tmp_path, **changes))
    assert message in info.value.message


def test_unknown_recipe_name_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError, match=r"available: .*yonsei"):
        load_recipe("no-such-recipe")


def test_columns_map_to_image_types_and_regions() -> None:
    assert describe_column("t1ce_glcm_Contrast").image_type == "original"
    info = describe_column("t2_shell3mm_log-sigma-2-0-mm_firstorder_Mean")
    assert (info.image_type, info.sigma_mm, info.region) == ("log", 2.0, "shell3mm")
    assert describe_column("t2_wavelet-LLH_glrlm_RunEntropy").image_type == "wavelet"
    assert describe_column("primary_subtype=TN").region == "clinical"
    names = ["shape_Sphericity", "t1ce_glcm_Contrast", "t1ce_log-sigma-1-0-mm_glcm_Contrast",
             "t2_shell1mm_firstorder_Mean", "primary_subtype=TN"]
    choice = choose_columns(names, ("original", "log", "wavelet"), (1.0, 3.0), ("tumour",))
    assert [names[i] for i in choice.indices] == [*names[:3], "primary_subtype=TN"]
    assert choice.missing == ["LoG sigma 3 mm image features", "wavelet image features"]
