"""The set of model bundles a job runs: the subtype model (with or without the primary subtype) and the
receptor heads (ER, PR, HER2, HER2 three-tier) when present.

Layout: ``<models_dir>/<task>/`` holds one :mod:`node.model.bundle` directory per task (``subtype``,
``subtype-noprimary``, ``er``, ``pr``, ``her2``, ``her2-3tier``). Each bundle is verified by
:func:`node.model.bundle.load_bundle` (SHA-256 of every artefact) and must have been trained with the radiomics
parameter file the pipeline uses now. Loaded sets are cached per directory and the identity of every bundle file
(inode, size, modification time), so a long-running (warm) worker verifies the bundles once, and again after any
of their files changes on disk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from node.model.bundle import MANIFEST, Bundle, BundleError, load_bundle
from node.model.tasks import Task
from node.sr.content import SubtypeModel

logger = logging.getLogger(__name__)

DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[2] / "models" / "demo"
#: Receptor heads run in addition to the subtype model when their bundle is present, in report order.
RECEPTOR_TASKS: tuple[Task, ...] = (Task.ER, Task.PR, Task.HER2, Task.HER2_3TIER)

_cache: dict[tuple[str, str, tuple[tuple[str, int, int, int], ...]], ModelSet] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class ModelSet:
    """The verified bundles found in one models directory, keyed by task."""

    directory: Path
    bundles: Mapping[Task, Bundle]

    def choose_subtype(self, primary_subtype: str | None) -> tuple[Bundle, SubtypeModel, list[str]]:
        """The subtype bundle for this study, which variant it is, and warnings about the choice.

        With a known primary subtype the ``subtype`` bundle is used when present (else ``subtype-noprimary``,
        with a warning); without it, ``subtype-noprimary``.
        """
        warnings: list[str] = []
        if primary_subtype is not None:
            if Task.SUBTYPE in self.bundles:
                return self.bundles[Task.SUBTYPE], SubtypeModel.WITH_PRIMARY, warnings
            warnings.append("the primary-tumour subtype is known but no 'subtype' model is installed; "
                            "the model without the primary subtype was used")
        if Task.SUBTYPE_NOPRIMARY in self.bundles:
            return self.bundles[Task.SUBTYPE_NOPRIMARY], SubtypeModel.WITHOUT_PRIMARY, warnings
        raise BundleError(
            f"no usable subtype model in {self.directory}: 'subtype-noprimary' is missing"
            + ("" if primary_subtype is not None else " and the primary-tumour subtype is unknown")
        )

    @property
    def receptor_bundles(self) -> dict[Task, Bundle]:
        return {task: self.bundles[task] for task in RECEPTOR_TASKS if task in self.bundles}


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int, int], ...]:
    """The identity of every file of every bundle (path, inode, size, modification time in ns): a bundle replaced,
    rewritten or touched in any file is loaded (and its SHA-256 sums verified) again, never served stale."""
    out = []
    for task in Task:
        folder = directory / task.value
        if not (folder / MANIFEST).is_file():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            try:
                stat = path.stat()
            except OSError:  # removed meanwhile: the next load sees the change
                continue
            out.append((str(path.relative_to(directory)), stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(out)


def load_model_set(models_dir: Path | None = None, radiomics_sha256: str | None = None) -> ModelSet:
    """Load and verify every bundle present in ``models_dir`` (default: the repository's ``models/demo``).

    ``radiomics_sha256`` (the pipeline's :attr:`RadiomicsParams.sha256`) must equal the hash each bundle
    recorded, so features and model agree. Raises :class:`~node.model.bundle.BundleError` (a ``ConfigError``)
    when the directory is missing, holds no subtype model, or a bundle is corrupt or incompatible.
    """
    directory = (models_dir or DEFAULT_MODELS_DIR).resolve()
    if not directory.is_dir():
        raise BundleError(f"models directory {directory} does not exist")
    key = (str(directory), radiomics_sha256 or "", _fingerprint(directory))
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        bundles: dict[Task, Bundle] = {}
        for task in Task:
            path = directory / task.value
            if not path.is_dir():
                continue
            bundle = load_bundle(path)
            recorded = (bundle.manifest.get("radiomics_config") or {}).get("sha256")
            if radiomics_sha256 and recorded and recorded != radiomics_sha256:
                raise BundleError(
                    f"the {task.value} model in {path} was trained with another radiomics parameter file than "
                    "the pipeline uses now; its features would not be comparable"
                )
            bundles[task] = bundle
        if Task.SUBTYPE not in bundles and Task.SUBTYPE_NOPRIMARY not in bundles:
            raise BundleError(f"models directory {directory} holds no subtype model (subtype/, subtype-noprimary/)")
        model_set = ModelSet(directory=directory, bundles=bundles)
        _cache.clear()  # keep one set: a changed directory replaces the old entry
        _cache[key] = model_set
        logger.info("loaded %d model bundle(s) from %s: %s", len(bundles), directory,
                    ", ".join(t.value for t in bundles))
        return model_set
