"""Study recipes (``config/recipes/*.yaml``): which images, regions, harmonisation, stability filter, selection,
classifiers and tasks a research run uses. :func:`load_recipe` validates a file and refuses anything it does not
understand with a :class:`~node.errors.ConfigError` that names the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from node.errors import ConfigError
from node.model.tasks import Task

RECIPES_DIR = Path(__file__).resolve().parents[2] / "config" / "recipes"
IMAGE_TYPES = ("original", "log", "wavelet")
SELECTION_METHODS = ("wilcoxon", "boruta", "lasso", "kbest")
CLASSIFIER_KINDS = ("logistic", "random_forest", "svm")
GRIDS = ("tiny", "quick", "full")
STUDIES = ("s1", "s3", "s4")
_TOP_KEYS = {
    "name", "title", "study", "images", "log_sigmas_mm", "regions", "harmonisation", "stability", "selection",
    "classifiers", "grid", "scoring", "cv_folds", "test_fraction", "tasks", "feature_sets", "baseline", "compare",
}


@dataclass(frozen=True)
class TaskSpec:
    """A node task, optionally reduced to a binary task: ``positive`` classes vs ``negative`` classes."""

    name: str
    task: Task
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()

    @property
    def derived(self) -> bool:
        return bool(self.positive)


@dataclass(frozen=True)
class Step:
    """A selection step or classifier: a method/kind and its parameters."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.kind}({inner})"


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    study: str
    images: tuple[str, ...]
    log_sigmas_mm: tuple[float, ...]
    regions: tuple[str, ...]
    batch_column: str | None
    icc_threshold: float | None
    second_segmentation: str | None
    selection: tuple[Step, ...]
    classifiers: tuple[Step, ...]
    grid: str | None
    scoring: str
    cv_folds: int
    test_fraction: float
    tasks: tuple[TaskSpec, ...]
    feature_sets: Mapping[str, tuple[str, ...]]
    baseline: str | None
    compare: tuple[str, ...]
    source: Path

    def with_overrides(self, **changes: Any) -> Recipe:
        """A copy with some fields replaced (tests and benchmarks shrink grids and cohorts)."""
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        values.update(changes)
        return Recipe(**values)


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"recipe {where}: {message}")


def _list(doc: Mapping[str, Any], key: str, where: str, default: list[Any] | None = None) -> list[Any]:
    value = doc.get(key, default)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(where, f"'{key}' must be a list, got {type(value).__name__}")
    return value


def _step(raw: Any, allowed: tuple[str, ...], key: str, where: str) -> Step:
    if not isinstance(raw, dict):
        raise _fail(where, f"each '{key}' entry must be a mapping, got {raw!r}")
    kind = raw.get("method", raw.get("kind"))
    if kind not in allowed:
        raise _fail(where, f"'{key}' entry {raw!r}: method/kind must be one of {', '.join(allowed)}")
    params = {k: v for k, v in raw.items() if k not in ("method", "kind")}
    for k, v in params.items():
        if not isinstance(v, int | float | str | bool):
            raise _fail(where, f"'{key}' {kind}: parameter {k} must be a number or text, got {v!r}")
    return Step(str(kind), params)


def _region_ok(region: str) -> bool:
    if region == "tumour":
        return True
    if region.startswith("shell") and region.endswith("mm"):
        digits = region[len("shell") : -len("mm")]
        return digits.isdigit() and 1 <= int(digits) <= 20
    return False


def _tasks(doc: Mapping[str, Any], where: str) -> tuple[TaskSpec, ...]:
    raw_tasks = _list(doc, "tasks", where)
    if not raw_tasks:
        raise _fail(where, "'tasks' must list at least one task")
    out: list[TaskSpec] = []
    for raw in raw_tasks:
        if not isinstance(raw, dict) or "task" not in raw:
            raise _fail(where, f"each task needs 'task' (one of {', '.join(t.value for t in Task)}), got {raw!r}")
        try:
            task = Task(str(raw["task"]))
        except ValueError:
            raise _fail(where, f"task {raw['task']!r} is not one of {', '.join(t.value for t in Task)}") from None
        positive = tuple(str(c) for c in raw.get("positive") or ())
        negative = tuple(str(c) for c in raw.get("negative") or ())
        if bool(positive) != bool(negative):
            raise _fail(where, f"task {raw.get('name', task.value)}: give both 'positive' and 'negative' or neither")
        unknown = [c for c in (*positive, *negative) if c not in task.classes]
        if unknown:
            raise _fail(where, f"task {task.value}: class(es) {', '.join(unknown)} not in {', '.join(task.classes)}")
        if set(positive) & set(negative):
            raise _fail(where, f"task {task.value}: a class cannot be both positive and negative")
        out.append(TaskSpec(str(raw.get("name", task.value)), task, positive, negative))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise _fail(where, "task names must be unique")
    return tuple(out)


def parse_recipe(doc: Any, source: Path) -> Recipe:
    """Validate a loaded YAML document (see config/recipes/*.yaml for the fields)."""
    where = str(source)
    if not isinstance(doc, dict):
        raise _fail(where, "the file must be a YAML mapping")
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise _fail(where, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_TOP_KEYS))}")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(where, "'name' must be a non-empty text")
    study = str(doc.get("study", ""))
    if study not in STUDIES:
        raise _fail(where, f"'study' must be one of {', '.join(STUDIES)}")
    images = tuple(str(i) for i in _list(doc, "images", where, ["original"]))
    bad = [i for i in images if i not in IMAGE_TYPES]
    if bad or "original" not in images:
        raise _fail(where, f"'images' must include original and only use {', '.join(IMAGE_TYPES)}, got {list(images)}")
    sigmas = tuple(float(s) for s in _list(doc, "log_sigmas_mm", where, [1.0, 2.0, 3.0]))
    if any(s <= 0 for s in sigmas):
        raise _fail(where, "'log_sigmas_mm' must be positive")
    regions = tuple(str(r) for r in _list(doc, "regions", where, ["tumour"]))
    if any(not _region_ok(r) for r in regions) or "tumour" not in regions:
        raise _fail(where, f"'regions' must include tumour and only tumour / shell<d>mm (1-20), got {list(regions)}")
    harmon = doc.get("harmonisation")
    batch_column: str | None = None
    if harmon is not None:
        if not isinstance(harmon, dict) or harmon.get("method") != "combat" or not harmon.get("batch_column"):
            raise _fail(where, "'harmonisation' must be null or {method: combat, batch_column: <labels column>}")
        batch_column = str(harmon["batch_column"])
    stab = doc.get("stability")
    icc: float | None = None
    seg2: str | None = None
    if stab is not None:
        if not isinstance(stab, dict) or stab.get("method") != "icc":
            raise _fail(where, "'stability' must be null or {method: icc, threshold: 0..1, second_segmentation: FILE}")
        icc = float(stab.get("threshold", 0.75))
        if not 0.0 < icc < 1.0:
            raise _fail(where, f"ICC threshold must be in (0, 1), got {icc}")
        seg2 = str(stab.get("second_segmentation", "features_seg2.csv"))
    selection = tuple(_step(s, SELECTION_METHODS, "selection", where) for s in _list(doc, "selection", where))
    classifiers = tuple(_step(c, CLASSIFIER_KINDS, "classifiers", where) for c in _list(doc, "classifiers", where))
    grid = doc.get("grid")
    if grid is not None and grid not in GRIDS:
        raise _fail(where, f"'grid' must be one of {', '.join(GRIDS)}")
    if grid is None and not classifiers:
        raise _fail(where, "give either 'grid' (the S1 selectors x classifiers) or 'classifiers'")
    if grid is not None and (classifiers or selection):
        raise _fail(where, "'grid' replaces 'selection' and 'classifiers'; give one or the other")
    folds = doc.get("cv_folds", 5)
    if not isinstance(folds, int) or not 2 <= folds <= 20:
        raise _fail(where, f"'cv_folds' must be an integer 2..20, got {folds!r}")
    test_fraction = float(doc.get("test_fraction", 0.3))
    if not 0.1 <= test_fraction <= 0.5:
        raise _fail(where, f"'test_fraction' must be in [0.1, 0.5], got {test_fraction}")
    sets_raw = doc.get("feature_sets") or {"all": {"regions": list(regions)}}
    if not isinstance(sets_raw, dict):
        raise _fail(where, "'feature_sets' must map a name to {regions: [...]}")
    feature_sets: dict[str, tuple[str, ...]] = {}
    for set_name, spec in sets_raw.items():
        set_regions = tuple(str(r) for r in (spec or {}).get("regions", ["tumour"])) if isinstance(spec, dict) else ()
        if not set_regions or any(r not in regions for r in set_regions):
            raise _fail(where, f"feature set {set_name!r}: regions must be a non-empty subset of {list(regions)}")
        feature_sets[str(set_name)] = set_regions
    compare = tuple(str(c) for c in _list(doc, "compare", where))
    if compare and (len(compare) != 2 or any(c not in feature_sets for c in compare)):
        raise _fail(where, f"'compare' must name two feature sets of {list(feature_sets)}")
    baseline = doc.get("baseline")
    if baseline not in (None, "non-conversion"):
        raise _fail(where, "'baseline' must be null or non-conversion")
    scoring = str(doc.get("scoring", "roc_auc"))
    if scoring not in ("accuracy", "f1_macro", "balanced_accuracy", "roc_auc"):
        raise _fail(where, f"'scoring' {scoring!r} is not one of accuracy, f1_macro, balanced_accuracy, roc_auc")
    return Recipe(
        name=name, title=str(doc.get("title", name)), study=study, images=images, log_sigmas_mm=sigmas,
        regions=regions, batch_column=batch_column, icc_threshold=icc, second_segmentation=seg2,
        selection=selection, classifiers=classifiers, grid=None if grid is None else str(grid), scoring=scoring,
        cv_folds=folds, test_fraction=test_fraction, tasks=_tasks(doc, where), feature_sets=feature_sets,
        baseline=None if baseline is None else str(baseline), compare=compare, source=source,
    )


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe by name (``config/recipes/<name>.yaml``) or by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"no recipe named {name_or_path!r}; available: {', '.join(available_recipes())}")
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from exc
    return parse_recipe(doc, path)
