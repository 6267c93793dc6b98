"""The comparison family in recipes/compare/: only the model differs between its members, and
run.sh trains them in order inside its output folder, then compares them against dense-S."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FAMILY = ROOT / "recipes" / "compare"
MEMBERS = ["dense-s", "dense-2s", "scone-s", "l3-s", "moe-s"]


def test_members_share_data_steps_batch_and_schedule():
    recipes = {m: yaml.safe_load((FAMILY / f"{m}.yaml").read_text()) for m in MEMBERS}
    assert sorted(p.stem for p in FAMILY.glob("*.yaml")) == sorted(MEMBERS)
    for member, recipe in recipes.items():
        assert recipe["trainer"].pop("default_root_dir") == f"runs/compare/{member}"
        decoder = recipe["model"].pop("decoder")
        assert decoder["init_args"]["dim"] == 512  # the same width; only the model differs
    shared = [(r["seed_everything"], r["trainer"], r["model"], r["data"]) for r in recipes.values()]
    assert all(s == shared[0] for s in shared)
    assert shared[0][2] == {"lr": 1.5e-3, "warmup_steps": 200}


def test_run_script_trains_each_member_in_order_then_compares(tmp_path):
    log = tmp_path / "calls.log"
    fake = tmp_path / "bin" / "embedkit"
    fake.parent.mkdir()
    # A stand-in for embedkit: records its arguments; `fit` makes the run folder it would.
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$PWD|$*" >> {log}\n'
        'if [ "$1" = fit ]; then member=$(basename "$3" .yaml);'
        ' mkdir -p "runs/compare/$member/lightning_logs/version_0"; fi\n'
    )
    fake.chmod(0o755)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("text")
    env = os.environ | {"PATH": f"{fake.parent}:{os.environ['PATH']}"}
    script = [str(FAMILY / "run.sh"), str(corpus), str(tmp_path / "out"), "--trainer.max_steps=3"]
    subprocess.run(["bash", *script], check=True, env=env, cwd=tmp_path, capture_output=True)
    calls = [line.split("|") for line in log.read_text().splitlines()]
    assert {cwd for cwd, _ in calls} == {str(tmp_path / "out")}
    fits = [args.split() for _, args in calls[:-1]]
    assert [Path(args[2]).stem for args in fits] == MEMBERS
    for args in fits:
        assert args[3:] == ["--data.corpus.init_args.path", str(corpus), "--trainer.max_steps=3"]
    compare = calls[-1][1].split()
    assert compare[0] == "compare" and compare[-2:] == ["--output", "comparison"]
    assert compare[1:-2] == [f"runs/compare/{m}/lightning_logs/version_0" for m in MEMBERS]
