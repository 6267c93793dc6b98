"""End to end through the ``embedkit`` command in a subprocess: every tiny recipe trains, and
bad input fails with a clear message and exit code 2."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
TINY = sorted((ROOT / "recipes" / "tiny").glob("*.yaml"))
SHORT = [
    "--trainer.accelerator=cpu",  # fp32 on the CPU: tiers must agree exactly, GPU machine or not
    "--trainer.max_steps=6",
    "--trainer.val_check_interval=6",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.limit_predict_batches=2",
    "--trainer.enable_progress_bar=false",
    "--data.batch_size=4",
    "--data.seq_len=32",
    "--data.train_samples_per_epoch=64",
]

pytestmark = pytest.mark.e2e


def embedkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("embedkit")
    assert exe, "the embedkit console script is not installed"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def perplexity_in(stdout: str) -> float:
    """The validation perplexity in the results table of a ``validate`` run."""
    return float(re.search(r"val/perplexity\s*│\s*([\d.]+)", stdout).group(1))


@dataclass(frozen=True)
class Fitted:
    """A test's own copy of a tiny recipe's fitted folder, and what fit and the first validate
    from its checkpoint printed."""

    recipe: Path
    cwd: Path
    checkpoint: str
    fit_output: str
    validate_stdout: str


@pytest.fixture(scope="session")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, Path], Fitted]:
    """``fitted(name, cwd)``: copies into ``cwd`` the folder where tiny recipe ``name`` was fitted
    and validated once per test session (under a lock, in a folder that every xdist worker of
    the session shares), so the recipe's own test and its tier tests start from one checkpoint
    and one reference validation, and each writes only its own copy."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base

    def fit(name: str, cwd: Path) -> Fitted:
        recipe = ROOT / "recipes" / "tiny" / f"{name}.yaml"
        source = shared / f"fitted-{name}"
        with FileLock(f"{source}.lock"):
            if not (source / "validate.out").is_file():
                shutil.rmtree(source, ignore_errors=True)  # what a failed attempt left
                source.mkdir()
                run = embedkit(
                    "fit", "--config", str(recipe), *SHORT, "--trainer.default_root_dir=run",
                    cwd=source,
                )  # fmt: skip
                assert run.returncode == 0, run.stderr[-3000:]
                checkpoints = sorted((source / "run").rglob("*.ckpt"))
                assert checkpoints, "fit must write a checkpoint"
                validate = embedkit(
                    "validate", "--config", str(recipe), *SHORT, f"--ckpt_path={checkpoints[-1]}",
                    cwd=source,
                )  # fmt: skip
                assert validate.returncode == 0, validate.stderr[-3000:]
                (source / "fit.out").write_text(run.stdout + run.stderr)
                (source / "validate.out").write_text(validate.stdout)
        shutil.copytree(source, cwd, dirs_exist_ok=True)
        checkpoint = sorted((cwd / "run").rglob("*.ckpt"))[-1]
        return Fitted(
            recipe=recipe,
            cwd=cwd,
            checkpoint=str(checkpoint),
            fit_output=(cwd / "fit.out").read_text(),
            validate_stdout=(cwd / "validate.out").read_text(),
        )

    return fit


@pytest.mark.parametrize("recipe", TINY, ids=[r.stem for r in TINY])
def test_tiny_recipe_fits_validates_tests_and_predicts(recipe, fitted, tmp_path):
    run = fitted(recipe.stem, tmp_path)  # fit, then validate from its checkpoint
    assert re.search(r"validation perplexity: [\d.]+ \(unigram baseline: [\d.]+\)", run.fit_output)
    assert "val/perplexity" in run.validate_stdout
    for command in ("test", "predict"):
        result = embedkit(
            command, "--config", str(recipe), *SHORT, f"--ckpt_path={run.checkpoint}", cwd=run.cwd
        )
        assert result.returncode == 0, (command, result.stderr[-3000:])


def test_plugins_lists_installed(tmp_path):
    result = embedkit("plugins", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for expected in ("GPUBackend", "SwiGLU", "IdentityRouter", "embedkit_dense.swiglu.SwiGLU"):
        assert expected in result.stdout


def test_unknown_plugin_lists_known_ones(tmp_path):
    recipe = ROOT / "recipes" / "tiny" / "dense.yaml"
    result = embedkit(
        "fit",
        "--config",
        str(recipe),
        "--model.decoder.init_args.feed_forward=SwiGLUX",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "unknown FeedForward 'SwiGLUX'" in result.stderr
    assert "known: MoEFeedForward, SwiGLU" in result.stderr
    assert "did you mean SwiGLU" in result.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--data.corpus=TextFiles", "--data.corpus.path=/no/such/corpus"], "data.corpus.path"),
        (["--data.seq_len=100000"], "data.seq_len=100000"),
    ],
    ids=["missing-corpus", "seq-len-longer-than-validation"],
)
def test_bad_input_is_one_clear_line(args, expected, tmp_path):
    recipe = ROOT / "recipes" / "tiny" / "dense.yaml"
    result = embedkit("fit", "--config", str(recipe), *SHORT, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_empty_corpus_is_one_clear_line(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    recipe = ROOT / "recipes" / "tiny" / "dense.yaml"
    result = embedkit(
        "fit",
        "--config",
        str(recipe),
        *SHORT,
        "--data.corpus=TextFiles",
        f"--data.corpus.path={tmp_path / 'empty.txt'}",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "empty" in result.stderr and str(tmp_path / "empty.txt") in result.stderr


def test_shards_of_another_tokenizer_are_refused(tmp_path):
    recipe = ROOT / "recipes" / "tiny" / "dense.yaml"
    common = [
        "fit",
        "--config",
        str(recipe),
        *SHORT,
        "--trainer.max_steps=1",
        "--data.data_dir=shards",
    ]
    first = embedkit(*common, "--data.tokenizer=ByteTokenizer", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    tokenizer = tmp_path / "tokenizer.json"
    from embedkit.data.corpus import BundledCorpus
    from embedkit.data.tokenizers import BPETokenizer

    bpe = BPETokenizer(vocab_size=300)
    corpus = BundledCorpus()
    bpe.prepare(
        train_documents=corpus.documents, corpus_fingerprint=corpus.fingerprint, cache_dir=tmp_path
    )
    bpe.save(tokenizer)
    second = embedkit(
        *common,
        "--data.tokenizer=TokenizerFile",
        f"--data.tokenizer.path={tokenizer}",
        cwd=tmp_path,
    )
    assert second.returncode == 2, second.stderr[-2000:]
    assert "data.tokenizer" in second.stderr and "shards" in second.stderr


def validated_perplexity(run: Fitted, *extra: str) -> float:
    """The validation perplexity of ``run``'s checkpoint with ``extra`` flags."""
    result = embedkit(
        "validate", "--config", str(run.recipe), *extra, *SHORT, f"--ckpt_path={run.checkpoint}",
        cwd=run.cwd,
    )  # fmt: skip
    assert result.returncode == 0, (extra, result.stderr[-3000:])
    return perplexity_in(result.stdout)


def test_tables_move_tier_by_overlay_alone(fitted, tmp_path):
    run = fitted("token-table", tmp_path)
    perplexities = {
        tier: validated_perplexity(
            run, "--config", str(ROOT / "recipes" / "storage" / f"{tier}.yaml")
        )
        for tier in ("gpu", "pinned", "zarr")
    }
    assert len(set(perplexities.values())) == 1, perplexities


def test_scone_fit_export_then_validate_on_every_tier(fitted, tmp_path):
    run = fitted("scone", tmp_path)
    assert (run.cwd / "runs" / "tiny-scone" / "fgrams.npz").is_file(), "the vocab is kept"
    export = embedkit(
        "export", "--config", str(run.recipe), "--ckpt_path", run.checkpoint, "--out", "tables",
        cwd=run.cwd,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr[-3000:]
    reference = perplexity_in(run.validate_stdout)  # the same checkpoint, computing every f-gram
    table = "--model.decoder.init_args.input_embedding.init_args.table=tables/fgram_table"
    for tier in ("gpu", "pinned", "zarr"):
        overlay = str(ROOT / "recipes" / "storage" / f"{tier}.yaml")
        assert validated_perplexity(run, "--config", overlay, table) == pytest.approx(
            reference, rel=1e-5
        )


def test_l3_fit_export_then_validate_on_every_tier(fitted, tmp_path):
    run = fitted("l3", tmp_path)
    assert (run.cwd / "runs" / "tiny-l3" / "allocation.npz").is_file(), "the allocation is kept"
    export = embedkit(
        "export", "--config", str(run.recipe), "--ckpt_path", run.checkpoint, "--out", "tables",
        cwd=run.cwd,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr[-3000:]
    assert "tables/l3-before2-kv (zarr)" in export.stdout
    reference = perplexity_in(run.validate_stdout)  # the same checkpoint, tables in the model
    tables = "--model.decoder.init_args.tables=tables"
    for tier in ("gpu", "pinned", "zarr"):
        overlay = str(ROOT / "recipes" / "storage" / f"{tier}.yaml")
        assert validated_perplexity(run, "--config", overlay, tables) == pytest.approx(
            reference, rel=1e-5
        )
    # Tables of another run are refused with one clear line.
    other = embedkit(
        "validate", "--config", str(run.recipe), *SHORT, f"--ckpt_path={run.checkpoint}",
        "--model.decoder.init_args.sublayers.init_args.allocation.init_args.strategy=uniform",
        "--model.decoder.init_args.sublayers.init_args.allocation_path=other.npz",
        "--model.decoder.init_args.tables=tables", cwd=run.cwd,
    )  # fmt: skip
    assert other.returncode == 2, other.stderr[-3000:]
    assert "another model: its allocation_hash" in other.stderr
