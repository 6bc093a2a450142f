"""The benchmark scripts run (tiny sizes) and print their tables, so they do not rot.

Also: the "before" CRD loss the step benchmark compares against gives the same values
and gradients as the fused path the project trains with (the speed-up changed no result).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import kernels  # noqa: E402
import memory as memory_bench  # noqa: E402
import scale  # noqa: E402
import scaling  # noqa: E402
import step  # noqa: E402
import sweep_overhead  # noqa: E402


@pytest.fixture
def doc(tmp_path, monkeypatch):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nhand-written part\n")
    monkeypatch.setattr(common, "DOC", path)
    return path


def test_table_and_append(doc, capsys):
    table = common.Table("T", ["a", "bb"])
    table.add("x", "1.00x")
    table.notes.append("a note")
    text = table.markdown()
    assert "| x | 1.00x |" in text and "- a note" in text
    common.report([table], append=False, title="nothing")
    assert "Run log" not in doc.read_text()
    common.report([table], append=True, title="run one")
    common.report([table], append=True, title="run two")
    body = doc.read_text()
    assert body.startswith("# Benchmarks\n\nhand-written part")
    assert body.count(common.RUN_LOG_HEADING) == 1
    assert "### run one" in body and "### run two" in body and "load average" in body and "- command: `python" in body


def test_interleave_alternates_and_repeats():
    calls = []
    times = common.interleave({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, 3)
    assert times == {"a": [1.0] * 3, "b": [2.0] * 3}
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then a b / b a / a b


@pytest.mark.parametrize("mode, path", [("shared", None), ("exact", "dense"), ("exact", "gather"), ("exact", "chunked")])
def test_before_and_now_crd_agree(mode, path, monkeypatch):
    """The fused NCE path (now) and autograd through contrast_scores + nce_loss (before)."""
    from orchestrator.data.negatives import NegativeSampler
    from orchestrator.distill import nce
    from orchestrator.distill.crd import CRDLoss

    torch.manual_seed(0)
    n, k, b = 300, 40, 16
    if path in ("gather", "chunked"):
        monkeypatch.setattr(nce, "DENSE_MAX_ELEMENTS", 0)
    if path == "chunked":
        monkeypatch.setattr(nce, "GATHER_CHUNK_ELEMENTS", 5 * (k + 1) * 16)  # chunks of 5 anchors
    now, before = CRDLoss(12, 20, n, feat_dim=16, seed=1), CRDLoss(12, 20, n, feat_dim=16, seed=1)
    before.load_state_dict(now.state_dict())
    labels = torch.randint(0, 5, (n,))
    sampler = NegativeSampler(labels, k, "class", 0)
    for _ in range(3):
        s, t, idx = torch.randn(b, 12), torch.randn(b, 20), torch.randperm(n)[:b]
        neg = sampler.sample_shared() if mode == "shared" else sampler.sample(idx, labels[idx])
        s_now, s_before = s.clone().requires_grad_(), s.clone().requires_grad_()
        loss_now = now(s_now, t, idx, neg)
        loss_before = step.legacy_crd_forward(before, s_before, t, idx, neg)
        torch.testing.assert_close(loss_now, loss_before)
        loss_now.backward()
        loss_before.backward()
        torch.testing.assert_close(s_now.grad, s_before.grad)
        for p, q in zip(now.parameters(), before.parameters()):
            torch.testing.assert_close(p.grad, q.grad)
            p.grad = q.grad = None
    for (name, x), (_, y) in zip(now.state_dict().items(), before.state_dict().items()):
        torch.testing.assert_close(x, y, msg=name)


def test_step_quick(doc, capsys):
    assert step.main(["--quick", "--repeats", "1", "--ks", "64", "--kd-ks", "--no-breakdown", "--append"]) == 0
    out = capsys.readouterr().out
    assert "x student alone (CE)" in out and "crd K=64 shared cached" in out and "[before]" in out
    assert "Training step" in doc.read_text()


def test_step_augmented_quick(doc, capsys):
    assert step.main(["--quick", "--augmented", "--repeats", "1", "--append"]) == 0
    out = capsys.readouterr().out
    assert "View cache build" in out and "KD, augmented, view cache top-5" in out and "x student alone, augmented" in out
    assert "live vs view-cached teacher" in doc.read_text()


def test_memory_child_measures_a_step():
    spec = {"method": "crd", "n": 500, "k": 64, "mode": "exact", "batch": 16, "steps": 1, "threads": 1,
            "teacher": "tiny_teacher", "student": "tiny_student"}
    res = memory_bench.child(spec)
    assert res["memory"] == 2 * 500 * 128 * 4 and res["step_peak"] >= 0 and res["s_per_step"] > 0
    queue = memory_bench.child({**spec, "mode": "shared", "memory": "queue"})
    assert queue["memory"] == 2 * 64 * 128 * 4  # two (K, d) queues, not (N, d) banks


def test_kernels_quick_times_every_kernel_and_the_floor(capsys):
    assert kernels.main(["--quick", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "kernel" not in line]
    assert len(rows) == len(kernels.kernels(4, 8, 4, 20, "cpu")) + 1  # every kernel and the floor
    assert all(float(row.split("|")[2]) > 0 for row in rows)


def test_cifar_pair_quick_on_cpu(capsys):
    assert scaling.main(["--quick", "--no-ray", "--cifar-pair"]) == 0
    out = capsys.readouterr().out
    assert "resnet32x4 -> resnet8x4" in out and "crd K=256 exact live" in out


@pytest.mark.slow
def test_step_quick_full(capsys):
    assert step.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "[reference]" in out and "One step broken down" in out


@pytest.mark.slow
def test_memory_quick(capsys):
    assert memory_bench.main(["--quick", "--ks", "128", "--ns", "2000"]) == 0
    out = capsys.readouterr().out
    assert "Peak memory" in out and "CRD bank, exact [before]" in out and "CRD queue" in out and "error" not in out


@pytest.mark.slow
def test_sweep_overhead_quick(ray_session, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert sweep_overhead.main(["--quick", "--no-pieces"]) == 0
    out = capsys.readouterr().out
    assert "fixed cost per trial" in out and "in-process" in out


@pytest.mark.slow
def test_sweep_overhead_views_quick(ray_session, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert sweep_overhead.main(["--quick", "--views", "--no-pieces"]) == 0
    out = capsys.readouterr().out
    assert "live teacher vs shared view cache" in out and "augmented, shared views" in out


@pytest.mark.slow
def test_scale_quick(ray_session, tmp_path, monkeypatch, capsys):
    """5 tiny trials: every figure of the 1,000-trial benchmark is there and consistent."""
    import json

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert scale.main(["--num-samples", "1"]) == 2 and "--num-samples" in capsys.readouterr().err
    assert scale.main(["--quick", "--json", str(tmp_path / "scale.json")]) == 0
    res = json.loads((tmp_path / "scale.json").read_text())
    assert res["num_samples"] == 5 and len(res["raw"]["completions"]) == 5 == res["child_runs"]
    first, last = res["windows"]
    assert (first["trials"], last["trials"]) == ("2-2", "5-5")
    for w in (first, last):
        assert 0 < w["in_trial_run_s"] <= w["wall_per_trial_s"] and w["Tune experiment-state saves"] > 0
    assert res["mlflow_db_bytes"] > 0 and res["journal_bytes"] > 0 and res["sweep_folder_bytes"] > 0
    assert [r["trials"] for r in res["rss"]] == [1, 2, 3, 4, 5] and all(r["driver_bytes"] > 0 for r in res["rss"])
    assert res["compare_s"] > 0 and 0 < res["own_run_lookup_s"] and 0 < res["own_run_read_all_s"]
    out = capsys.readouterr().out
    assert "Driver overhead per trial" in out and "`python -m orchestrator.compare` on the sweep" in out


@pytest.mark.slow
def test_scaling_quick(ray_session, capsys):
    assert scaling.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "1 and 2 Ray Train workers" in out


def test_methods_quick_pairs_gains_resumes_and_refuses_bad_input(isolated_cache, tmp_path, sqlite_store, capsys):
    """Each method at its paper defaults vs the student alone on the same seeds; a second call reuses every
    stored result; an unknown method or one that cannot fit the data exits 2 before any training."""
    import json

    import methods

    out, store = tmp_path / "m", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"  # the teacher's run goes here
    assert methods.main(["--quick", "--methods", "kd", "ce+sp", "--seeds", "1", "2", "--out", str(out), store]) == 0
    text = capsys.readouterr().out
    assert "6 runs to do" in text and "| `kd`" in text and "| `ce+sp`" in text and "[" in text
    assert "kd seed 2: epoch 2/2, train loss" in text  # progress within a run
    stored = json.loads((out / "results.json").read_text())
    assert sorted(stored) == ["ce", "ce+sp", "kd"] and all(sorted(v) == ["1", "2"] for v in stored.values())
    assert (out / "gains.png").stat().st_size > 0
    assert methods.main(["--quick", "--methods", "kd", "--seeds", "1", "2", "--out", str(out), store]) == 0
    assert "0 runs to do" in capsys.readouterr().out
    assert methods.main(["--quick", "--methods", "nope", "--out", str(tmp_path / "bad")]) == 2
    assert methods.main(["--quick", "--methods", "crd", "--out", str(tmp_path / "bad")]) == 2
    assert "distill.crd.nce_k" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_methods_tune_finds_each_methods_own_space():
    import methods

    assert methods.space_for("kd").stem == "kd" and methods.space_for("ce+pkt").stem == "pkt"
    assert methods.space_for("kd_ls").stem == "logit_std"  # a space choosing between kd_ls and dkd_ls
    assert {methods.space_for(m).stem for m in methods.default_methods()} >= {"dml", "dogo", "seed", "kdsvd"}
    with pytest.raises(ValueError, match="no search space"):
        methods.space_for("ce+kd+dist")


def test_selection_row_shows_the_student_alone_at_the_chosen_configs_optimiser_settings():
    """A confirmation with two students alone (one per learning rate) shows the one the chosen config's gain is
    paired with: the chosen paper default at lr 0.1 is not compared with the student alone at lr 0.28."""
    import selection

    def cand(label, role, params, mean):
        return {"label": label, "role": role, "params": params, "test_mean": mean, "test_sd": 0.001}

    summary = {"chosen": "trial 1 (paper default)", "gain_vs_alone": None, "gain_vs_paper_default": None, "wall_s": 60,
               "chosen_alone": 3,  # summary.json names the chosen config's student alone by its index
               "candidates": [cand("trial 8", "tuned", {"train.lr": 0.28, "distill.method": "kd"}, 0.864),
                              cand("trial 1 (paper default)", "paper", {"train.lr": 0.1, "distill.method": "kd"}, 0.871),
                              cand("student alone", "alone", {"train.lr": 0.28}, 0.872),
                              cand("student alone", "alone", {"train.lr": 0.1}, 0.863)]}
    assert selection.row(0, summary)[4] == "86.30 ± 0.10"
    assert selection.row(0, {**summary, "chosen_alone": None})[4] == "-"  # no baseline (sweep.baseline=false)
