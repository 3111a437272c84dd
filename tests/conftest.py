"""Shared fixtures: a tiny dataset built with the project's own builder, and tiny-model settings."""

from __future__ import annotations

import os
from pathlib import Path

# OpenMP threads that sleep instead of spinning while they wait: on a shared 2-core machine spinning threads
# make every tiny CPU step up to 10x slower under load (set before torch is imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

# One bundle cache for the whole run, shared by its xdist workers (they inherit the environment), and not the
# user's ~/.cache: the suite neither reads bundles an earlier run left nor leaves its own behind.
if "PYTEST_XDIST_WORKER" not in os.environ and "PGOLF_BUNDLE_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _BUNDLE_CACHE = tempfile.mkdtemp(prefix="pgolf-test-bundles-")
    os.environ["PGOLF_BUNDLE_CACHE"] = _BUNDLE_CACHE
    atexit.register(shutil.rmtree, _BUNDLE_CACHE, ignore_errors=True)

# The long end-to-end tests (each several seconds on 2 CPU cores), marked `slow`: the default run
# (`python -m pytest`, addopts -m "not slow") skips them, `python -m pytest -m slow` runs only them, CI runs
# both. Measured with --durations; a test id prefix here marks every parametrization of it.
SLOW = (
    "tests/test_plugin_matrix.py::test_plugin_changes_the_computation",  # two tiny trainings per plugin
    "tests/test_train.py::test_nproc_2_on_cpu_matches_one_process",  # torchrun, 2 processes
    "tests/test_eval.py::test_distributed_eval_equals_single_process",  # torchrun per evaluator
    "tests/test_bundle.py::test_bundled_script_runs_without_pgolf_and_trains_like_pgolf_train",  # sandboxed run
    "tests/test_bundle.py::test_minified_bundle_of_each_recipe_trains_exactly_like_pgolf_train",  # 2 runs each
    "tests/test_doc_isolation.py::test_document_ttt_warmup_compiles_one_graph_for_every_row_length",  # compiles
    "tests/test_export_plugins.py::test_prune_to_fit_run_fits_code_plus_artifact",
    "tests/test_readme.py::test_readme_tour_runs_as_written",  # the tour's commands, as subprocesses, by group
    "tests/test_soft_round_qat.py::test_compiled_switch_and_alpha_change_the_output_without_recompiling",  # ~12 s
    "tests/test_train.py::test_sigterm_marks_the_run_interrupted",  # a subprocess killed mid-run
    "tests/test_bench.py::test_varlen_stand_in_attends_within_each_packed_document",  # eager flex: ~6-13 s
    "tests/test_varlen.py::test_compiled_loop_with_prewarmed_buckets_never_recompiles",  # compiled runs, ~25 s each
    "tests/test_varlen.py::test_warmup_compiles_one_graph_per_mode_and_cu_size_logging_each",  # compiled, ~30 s
    "tests/test_eval_speed.py::test_compiled_ttt_adaptation_is_warmed_and_adapts_like_eager",  # 3 graphs, ~16 s
    "tests/test_model_plugins.py::test_value_embeddings_frozen_keeps_the_table_fixed",  # compiled fwd+bwd, ~30 s
    "tests/test_pr534_qat.py::test_recipe_trains_as_the_record_through_late_qat_and_swa",  # 2 runs, ~17-28 s
    "tests/test_host_syncs.py::test_other_plugins_step_makes_no_host_sync",  # 5 compatible-set runs, ~30 s
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)


TINY_CORE = [
    "core.num_layers=2", "core.model_dim=64", "core.num_heads=4", "core.num_kv_heads=2",
    "core.train_seq_len=64", "core.train_batch_tokens=1024", "core.grad_accum_steps=1",
    "core.iterations=12", "core.warmdown_iters=4", "core.warmup_steps=0", "core.val_loss_every=0",
    "core.train_log_every=4", "core.val_batch_size=2048", "core.val_max_tokens=4096",
    "core.max_wallclock_seconds=0", "core.muon_momentum_warmup_steps=4", "core.device=cpu",
    "core.vocab_size=320", "core.compile=false",
]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Challenge-format shards + tokenizer (vocab 320) built from the generated corpus."""
    from dataprep.build import build_dataset
    from dataprep.corpus import generate_documents

    root = tmp_path_factory.mktemp("tinydata")
    src = root / "text"
    src.mkdir()
    for i, doc in enumerate(generate_documents(240, seed=7)):
        (src / f"doc{i:04d}.txt").write_text(doc, encoding="utf-8")
    out = root / "data"
    build_dataset(src, out, vocab_size=320, val_docs=30)
    return out


@pytest.fixture
def tiny_sets(tiny_data, tmp_path) -> list[str]:
    return [*TINY_CORE, f"core.data_path={tiny_data}", f"core.out_dir={tmp_path / 'runs'}"]


@pytest.fixture(scope="session")
def tiny_core() -> list[str]:
    return list(TINY_CORE)


@pytest.fixture(scope="session")
def tiny_caseops_data(tmp_path_factory) -> tuple[Path, list[str]]:
    """(data dir, its val documents' original texts): the generated corpus built with the CaseOps transform
    (vocab 320: 4 operator pieces reserved) and its byte sidecar; 4 short val documents."""
    from dataprep.build import build_dataset
    from dataprep.corpus import generate_documents
    from plugins.caseops import CaseOpsTransform

    root = tmp_path_factory.mktemp("tinycaseops")
    src = root / "text"
    src.mkdir()
    docs = generate_documents(240, seed=7)
    for i, doc in enumerate(docs):
        (src / f"doc{i:04d}.txt").write_text(doc, encoding="utf-8")
    out = root / "data"
    build_dataset(src, out, vocab_size=320, val_docs=4, transform=CaseOpsTransform())
    return out, docs[:4]


@pytest.fixture
def one_thread():
    """Tiny per-chunk ops: one thread avoids OpenMP spinning on a shared 2-core box (10x slower under load).
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
