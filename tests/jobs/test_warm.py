"""Warm workers (node.jobs.warm): a real worker subprocess preloads before it says ready, runs two studies in one
pool process without importing anything for them, replaces a pool process that passed the memory bound; two
studies run in one warmed process give the features and probabilities the same studies give in fresh processes;
the model-set cache reloads a bundle whose files changed; the thread budget."""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.jobs import model_set as model_sets
from node.jobs import warm
from node.jobs.model_set import load_model_set
from node.ledger.db import Ledger
from node.ledger.repository import Repository
from node.ledger.states import JobState
from node.model.bundle import BundleError
from node.vocabulary import DELIVER_TASK, PROCESS_TASK
from tests.chaos.harness import alive, children
from tests.jobs.conftest import ROOT, BrokerUnderTest, Node, WorkerFactory
from tests.scp.fixtures import FakeClock, ListenerFactory, send
from tests.support.studies import SynthCase, synth_cohort
from tests.support.waiting import wait_for

JOB_TIMEOUT = 240.0  # two small studies, one after the other, on the shared 2-core machine
#: packages a job must not import in a warm pool process (the preload did)
HEAVY = {"SimpleITK", "ants", "radiomics", "xgboost", "highdicom", "matplotlib", "scipy", "sklearn"}


def _records(log: str) -> list[dict[str, Any]]:
    out = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _embedded() -> BrokerUnderTest:
    return BrokerUnderTest("embedded", {"AINODE_QUEUE": f"ainode-test-{uuid.uuid4().hex[:10]}"})


@pytest.fixture(scope="session")
def second_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another small synthetic study (seed 2: other lesions, other subject) than ``synth_case`` (seed 1)."""
    out = tmp_path_factory.getbasetemp() / "warm-synth-seed2"
    if not (out / "case0000" / "seg").is_dir():
        synth_cohort(out, 1, 2)
    return out / "case0000"


@pytest.fixture
def two_studies(tmp_path: Path, start: ListenerFactory, synth_case: SynthCase, second_case: Path,
                models_dir: Path) -> Iterator[tuple[Node, list[tuple[int, str, str, str]]]]:
    """Both studies received by a real listener and dispatched: two queued jobs and their task arguments."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    clock = FakeClock()
    listener = start(url, clock, quiet_period_s=0)
    assert set(send(listener.port, synth_case.all)) == {0}
    assert set(send(listener.port, sorted(p for p in second_case.rglob("*.dcm")))) == {0}
    ledger = Ledger.open(url)
    node = Node(tmp_path, tmp_path / "spool", url, Repository(ledger), clock, models_dir)
    assert len(node.dispatch()) == 2
    yield node, node.sent
    ledger.dispose()


# -- a real worker ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_studies_run_in_one_warm_pool_process(two_studies: tuple[Node, list[tuple[int, str, str, str]]],
                                                  workers: WorkerFactory) -> None:
    node, sent = two_studies
    broker = _embedded()
    worker = workers(node.worker_env(), broker.env)
    worker.wait_ready(120)
    log = worker.log()
    assert log.index("worker preloaded in") < log.index(" ready."), "ready was said before the preload"
    client = broker.client(node.spool_dir)
    for args in sent:
        client.send_task(PROCESS_TASK, args=list(args))
    wait_for(lambda: all(node.job(args[0]).state is JobState.DONE for args in sent), JOB_TIMEOUT,
             f"both jobs done ({worker.log_path})")
    records = _records(worker.log())
    runs = [r for r in records if " as job " in str(r.get("message")) and "of this pool process" in r["message"]]
    assert len(runs) == 2, runs
    assert runs[0]["process"] == runs[1]["process"], "the second study ran in another process"
    assert "as job 1 of this pool process" in runs[0]["message"]
    assert "as job 2 of this pool process" in runs[1]["message"]
    for run in runs:  # "...; N package(s) imported during it: a, b"
        imported = set(run["message"].partition("imported during it")[2].lstrip(": ").split(", ")) - {""}
        assert not imported & HEAVY, f"a warm process imported {imported & HEAVY} for a job"
    starts = [r for r in records if str(r.get("message")).startswith("pool process started: warm")]
    assert [r["process"] for r in starts] == [runs[0]["process"]], "one pool process, started once, warm"


def test_a_pool_process_past_the_memory_bound_is_replaced_after_its_task(node: Node, workers: WorkerFactory) -> None:
    """1 MiB: every pool process passes it with its first task and is replaced by a fresh (warm) one."""
    broker = _embedded()
    worker = workers(node.worker_env(), broker.env, AINODE_WORKER_MAX_MEMORY_MB="1")
    worker.wait_ready(120)
    client = broker.client(node.spool_dir)
    client.send_task(DELIVER_TASK, args=[None])

    def starts() -> list[int]:
        return [r["process"] for r in _records(worker.log())
                if str(r.get("message")).startswith("pool process started: warm")]

    wait_for(lambda: len(starts()) >= 2, 120, f"the pool process replaced ({worker.log_path})")
    first, second = starts()[:2]
    assert first != second
    wait_for(lambda: not alive(first), 30, "the first pool process gone")
    assert second in children(worker.proc.pid)  # (forked by a thread of the worker: not in its main thread's list)
    assert worker.proc.poll() is None, "the worker itself stopped"


# -- isolation: two studies in one warmed process == each in a fresh process --------------------------------

_RUN_STUDIES = r"""
import gc, hashlib, json, sys
from pathlib import Path

import SimpleITK as sitk

from node.config import Settings
from node.imaging import pons, sites
from node.jobs import process, warm

models, out, preload, *studies = sys.argv[1:]
if preload == "1":
    done = warm.preload(Settings.load(env={"AINODE_MODELS_DIR": models}))
    assert not done.problems, done.problems


def caches():
    images = (pons.mni_template(), pons._template_roi(), sites.region_atlas())
    return [hashlib.sha256(sitk.GetArrayViewFromImage(i).tobytes()).hexdigest() for i in images]


before = caches()
runs = []
run_features = process.run_features


def capture(*args, **kwargs):  # the pipeline's own output, kept for the comparison
    runs.append(run_features(*args, **kwargs))
    return runs[-1]


process.run_features = capture
results = {}
for number, study in enumerate(studies):
    result = process.process_study(Path(study), Path(out) / str(number), models_dir=Path(models))
    results[study] = {"features": [lesion.features for lesion in runs[-1].lesions],
                      "lesions": [lesion.to_json() for lesion in result.lesions]}
print(json.dumps({"results": results, "caches_unchanged": caches() == before, "frozen": gc.get_freeze_count()},
                 default=float))
"""


def _start_studies(models: Path, out: Path, studies: list[Path], *, preload: bool) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", _RUN_STUDIES, str(models), str(out), "1" if preload else "0",
                             *map(str, studies)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _outcome(process: subprocess.Popen[str]) -> dict[str, Any]:
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr[-3000:]
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def _same(a: object, b: object, path: str = "") -> None:
    """Equal, floats to 1e-9 relative (the same code on the same input: only summation order could differ)."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, int | float) and isinstance(b, int | float), path
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b)), \
            f"{path}: {a} != {b}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.slow
def test_two_studies_in_one_warm_process_match_fresh_processes(synth_case: SynthCase, second_case: Path,
                                                               models_dir: Path, tmp_path: Path) -> None:
    """Nothing of study A leaks into study B: B after A in one preloaded process gives B's features and
    probabilities of a fresh process, and the shared template/atlas caches are unchanged by the jobs."""
    a, b = synth_case.root, second_case
    warm_process = _start_studies(models_dir, tmp_path / "warm", [a, b], preload=True)
    fresh_process = _start_studies(models_dir, tmp_path / "fresh", [b], preload=False)  # at the same time
    warm_run, fresh_b = _outcome(warm_process), _outcome(fresh_process)
    assert warm_run["caches_unchanged"], "a job changed a cached template or atlas image"
    # the preload's heap is out of the collector's walks (node.heap); the fresh process froze nothing
    assert warm_run["frozen"] > 100_000 and fresh_b["frozen"] == 0
    assert warm_run["results"][str(b)]["features"], "study B has no lesion features"
    _same(warm_run["results"][str(b)], fresh_b["results"][str(b)], "B")
    assert warm_run["results"][str(a)]["features"] != warm_run["results"][str(b)]["features"]


# -- the model-set cache and the thread budget ---------------------------------------------------------------


def test_the_model_set_is_reloaded_when_a_bundle_file_changes(models_dir: Path, tmp_path: Path) -> None:
    models = shutil.copytree(models_dir, tmp_path / "models")
    first = load_model_set(models)
    assert load_model_set(models) is first  # cached: verified once
    bundle = next(p for p in sorted(models.iterdir()) if p.is_dir())
    artefact = next(p for p in sorted(bundle.iterdir()) if p.is_file() and p.name != "manifest.json")
    stat = artefact.stat()
    os.utime(artefact, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched: same content
    second = load_model_set(models)
    assert second is not first and second.bundles.keys() == first.bundles.keys()
    data = bytearray(artefact.read_bytes())
    data[-1] ^= 0xFF
    staging = artefact.with_name(artefact.name + ".new")
    staging.write_bytes(bytes(data))
    staging.replace(artefact)  # replaced (new inode, same size): verified again, and refused
    with pytest.raises(BundleError):
        load_model_set(models)
    assert model_sets._cache, "the cache lost its entry"


def test_thread_budget_divides_the_cores() -> None:
    assert warm.thread_budget(1, cores=8) == 8
    assert warm.thread_budget(2, cores=8) == 4
    assert warm.thread_budget(3, cores=8) == 2
    assert warm.thread_budget(4, cores=2) == 1


def test_limit_threads_sets_itk_and_the_environment() -> None:
    import SimpleITK as sitk
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    saved = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    saved_env = {name: os.environ.get(name) for name in warm.THREAD_VARIABLES}
    try:
        with threadpool_limits(limits=None):  # puts the BLAS/OpenMP limits back on exit
            applied = warm.limit_threads(1)
        assert applied["itk"] == 1 and sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
        assert all(os.environ[name] == "1" for name in warm.THREAD_VARIABLES)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(saved)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_preload_names_what_it_could_not_load(tmp_path: Path) -> None:
    from node.config import Settings

    try:
        done = warm.preload(Settings.load(env={"AINODE_MODELS_DIR": str(tmp_path / "none")}))
        assert gc.get_freeze_count() > 0  # what it loaded is out of the collector's walks (node.heap)
    finally:
        gc.unfreeze()  # this is the test runner's process: its later garbage must be collected again
    assert any(problem.startswith("model set:") for problem in done.problems), (done.problems, done.steps)
    assert done.model_bundles == 0 and "template and atlas" in done.steps


def test_preload_has_highdicom_read_its_tables_of_the_standard() -> None:
    """highdicom reads its IOD / module tables (JSON, ~0.2 s) on the first object a process builds: the preload
    does it before the fork, not each pool process's first SR (the cache is highdicom's own, cleared first so that
    an earlier test in this process cannot have filled it)."""
    from highdicom import _standard_utils

    _standard_utils.get_module_attribute_map.cache_clear()
    warm._warm_highdicom()
    assert _standard_utils.get_module_attribute_map.cache_info().currsize == 1
