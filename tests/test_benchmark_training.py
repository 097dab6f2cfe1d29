"""tools/benchmark_training.py: every task's quick benchmark trains every arm, and bad arguments
are refused before any training starts."""
import json
import math
import re

import pytest
import torch

import reloss
from tools import benchmark_training
from tools.reference import cls as reference_cls
from tools.reference import nat as reference_nat


@pytest.mark.slow
@pytest.mark.parametrize("task", ["cls", "pose", "nat"])
def test_quick_benchmark_trains_every_arm(task, tmp_path, capsys):
    out = tmp_path / task
    record = benchmark_training.main(["--task", task, "--quick", "--seeds", "2",
                                      "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| data | arm |" in printed and str(out) in printed
    assert {p.name for p in out.iterdir()} == {"results.json", "results.md", "curves.png"}
    assert json.loads((out / "results.json").read_text())["task"] == task
    chance = record["chance"]
    for variant, arms in record["results"].items():
        assert set(arms) == {"original", "surrogate", "mixed"}
        reference = arms["original"]["summary"]["mean"]
        for arm, result in arms.items():
            for run in result["runs"]:
                metrics = [value for _, value in run["curve"]]
                assert all(math.isfinite(v) for v in metrics), (variant, arm, run)
                assert [x for x, _ in run["curve"]][-1] == pytest.approx(1.0)
                # Well above chance: at least half-way from chance to the original loss's mean.
                assert run["final"] > chance + 0.5 * (reference - chance), (variant, arm, run)
        share = arms["mixed"]["gradient_share"]
        assert share is not None and 0 < share < 1
    assert all(math.isfinite(ms) and ms > 0 for ms in record["loss_ms"].values())


def test_seeds_of_an_arm_differ_and_repeat(tmp_path):
    """A seed fixes initialisation and data order: the same seed twice gives the same run, another
    seed a different one."""
    task = reference_cls
    first = task.run("clean", task.original_loss, 0, quick=True)
    again = task.run("clean", task.original_loss, 0, quick=True)
    other = task.run("clean", task.original_loss, 1, quick=True)
    assert first["curve"] == again["curve"]
    assert first["curve"] != other["curve"]


@pytest.mark.parametrize("args, message", [
    (["--task", "cls", "--checkpoint", "pose"], r"--checkpoint 'pose' is a 'pose' surrogate but "
                                                r"--task is 'cls'"),
    (["--task", "pose", "--checkpoint", "missing.pt"], r"--checkpoint 'missing.pt': 'missing.pt' "
                                                       r"is neither a shipped surrogate"),
    (["--task", "cls", "--seeds", "0"], r"--seeds should be a positive number of seeds but got 0"),
    (["--task", "cls", "--original-weight", "-1"], r"--original-weight should be a finite number "
                                                   r">= 0 but got -1.0"),
    (["--task", "segmentation"], r"argument --task: invalid choice: 'segmentation'"),
    (["--task", "cls", "--label-smoothing", "0.1"], r"--label-smoothing should be in \[0, 1\), "
                                                    r"and is for --task nat only"),
    (["--task", "nat", "--label-smoothing", "1"], r"--label-smoothing should be in \[0, 1\)"),
])
def test_bad_arguments_are_refused_before_training(args, message, tmp_path, capsys, monkeypatch):
    def no_training(*_, **__):
        raise AssertionError("training started")

    monkeypatch.setattr(benchmark_training.importlib, "import_module", no_training)
    with pytest.raises(SystemExit) as exit_info:
        benchmark_training.main(args + ["--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_existing_outputs_are_not_replaced_without_force(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(SystemExit):
        benchmark_training.main(["--task", "cls", "--quick", "--out", str(tmp_path)])
    assert "pass --force" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == "{}"


def test_mixed_loss_records_the_surrogate_share():
    surrogate = reloss.load_surrogate("cls")
    task = reference_cls
    mixed = benchmark_training.MixedLoss(task.original_loss, surrogate, 0.0)
    logits = torch.randn(16, 10, requires_grad=True)
    labels = torch.randint(10, (16,))
    loss = mixed(logits, labels)
    torch.testing.assert_close(loss, surrogate(logits, labels))
    assert mixed.shares == [pytest.approx(1.0)]


def test_label_smoothing_smooths_both_losses_as_fairseq():
    """nat with --label-smoothing: the original is nat_loss's smoothed NLL, the surrogate arm
    reloss_nat's smoothed surrogate."""
    task = reference_nat
    surrogate = reloss.load_surrogate("nat")
    functions = benchmark_training.loss_functions(task, surrogate, 1.0, 0.1)
    logits = torch.randn(3, 6, 40)
    target = torch.randint(4, 40, (3, 6))
    weight = (torch.arange(6) < torch.tensor([[6], [4], [2]])).float()
    log_p = logits.log_softmax(-1)
    nll = task.original_loss(logits, target, weight)
    spread = (-log_p.mean(-1) * weight).sum() / weight.sum()
    torch.testing.assert_close(functions["original"](logits, target, weight),
                               0.9 * nll + 0.1 * spread)
    torch.testing.assert_close(functions["surrogate"](logits, target, weight),
                               0.9 * surrogate(logits, target, weight) + 0.1 * spread)
