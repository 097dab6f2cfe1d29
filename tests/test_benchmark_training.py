"""tools/benchmarks/training.py: every task's quick benchmark trains every arm, and bad arguments
are refused before any training starts."""
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

import reloss
from tools.benchmarks import data
from tools.benchmarks import training as benchmark_training
from tools.benchmarks.reference import cls as reference_cls
from tools.benchmarks.reference import nat as reference_nat
from tools.benchmarks.reference import pose as reference_pose
from tools.benchmarks.reference import qa as reference_qa
from tools.benchmarks.reference import select

MNIST_QUICK = ["--regimes", "mnist-cnn-clean-sgd-10", "mnist-mlp-n40-adamw-20"]


@pytest.mark.slow
@pytest.mark.parametrize("task, regimes", [("cls", []), ("cls", MNIST_QUICK), ("pose", []),
                                           ("nat", [])], ids=["cls", "cls-mnist", "pose", "nat"])
def test_quick_benchmark_trains_every_arm(task, regimes, tmp_path, capsys):
    """One seed per arm (the matrix test below pairs two seeds). The MNIST regimes read real
    MNIST (tools/benchmarks/data.py fetches it into its cache if it is not there yet)."""
    out = tmp_path / task
    record = benchmark_training.main(["--task", task, *regimes, "--quick", "--seeds", "1",
                                      "--out", str(out)])
    if regimes:
        assert list(record["results"]) == regimes[1:]
    printed = capsys.readouterr().out
    assert "| regime | arm |" in printed and str(out) in printed
    assert {p.name for p in out.iterdir()} == {"results.json", "results.md", "curves.png",
                                               "matrix.png"}
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


def test_matrix_runs_regimes_of_both_splits_and_summarises_them(tmp_path, capsys):
    """Two cls regimes, one per split, two seeds, two mixed weights: every arm trains in every
    regime, the matrix pairs each arm with the original seed by seed and summarises each split."""
    out = tmp_path / "matrix"
    record = benchmark_training.main([
        "--task", "cls", "--regimes", "mlp-n20-sgd-60", "mlp-clean-sgd-10", "--quick",
        "--seeds", "2", "--original-weight", "0.5", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert list(record["results"]) == ["mlp-n20-sgd-60", "mlp-clean-sgd-10"]
    assert {r["split"] for r in record["regimes"].values()} == {"design", "held-out"}
    arms = ["surrogate", "mixed@0.5", "mixed@1"]
    for by_arm in record["results"].values():
        assert list(by_arm) == ["original", *arms]
        originals = {r["seed"]: r["final"] for r in by_arm["original"]["runs"]}
        for arm in arms:
            paired = by_arm[arm]["paired"]
            finals = {r["seed"]: r["final"] for r in by_arm[arm]["runs"]}
            expected = [finals[s] - originals[s] for s in (0, 1)]
            assert paired["differences"] == pytest.approx(expected)
            assert paired["mean"] == pytest.approx(sum(expected) / 2)
        for weight, arm in ((0.5, "mixed@0.5"), (1.0, "mixed@1")):
            assert record["mixed_arms"][arm] == weight
            assert 0 < by_arm[arm]["gradient_share"] < 1
    for split, regime in (("design", "mlp-n20-sgd-60"), ("held-out", "mlp-clean-sgd-10")):
        summary = record["matrix"][split]["surrogate"]
        mean = record["results"][regime]["surrogate"]["paired"]["mean"]
        assert summary["regimes"] == 1 and summary["mean"] == pytest.approx(mean)
        assert summary["below"] == ([regime] if mean < -0.3 else [])
    assert "| **design split** | design | 1 regimes |" in printed
    assert (out / "matrix.png").stat().st_size > 0
    assert "| **held-out split** |" in (out / "results.md").read_text()


@pytest.mark.parametrize("names, expected", [
    (["reference"], ["clean", "noisy"]),
    (["noisy", "clean"], ["clean", "noisy"]),  # the matrix's order, each once
    (["held-out", "mlp-clean-sgd-10"], [n for n, r in reference_cls.REGIMES.items()
                                        if r.split == "held-out"]),
    (["all"], list(reference_cls.REGIMES)),
])
def test_regime_selection(names, expected):
    task = reference_cls
    assert select(task.REGIMES, task.REFERENCE, names) == expected


def test_every_task_has_a_matrix_with_both_splits_where_it_is_built():
    cls_splits = [r.split for r in reference_cls.REGIMES.values()]
    assert cls_splits.count("design") >= 6 and cls_splits.count("held-out") >= 6
    options = [r.options for r in reference_cls.REGIMES.values()]
    assert {o["model"] for o in options} == set(reference_cls.MODELS)
    assert {o["noise"] for o in options} == {0.0, 0.2, 0.4}
    assert {o["optimizer"] for o in options} == {"sgd", "adamw"}
    assert {o["smoothing"] > 0 for o in options} == {True, False}
    pose_options = [r.options for r in reference_pose.REGIMES.values()]
    assert len(pose_options) >= 6
    assert {o["figures"] for o in pose_options} == set(reference_pose.FIGURES)
    assert {o["optimizer"] for o in pose_options} == {"adam", "sgd"}
    nat_splits = [r.split for r in reference_nat.REGIMES.values()]
    assert len(nat_splits) >= 6 and min(map(nat_splits.count, ("design", "held-out"))) >= 3
    nat_options = [r.options for r in reference_nat.REGIMES.values()]
    assert {o["pair"] for o in nat_options} == set(reference_nat.PAIRS) == {"a", "b"}
    assert {o["label_smoothing"] > 0 for o in nat_options} == {True, False}
    assert len({o["dim"] for o in nat_options}) >= 2
    qa_splits = [r.split for r in reference_qa.REGIMES.values()]
    assert qa_splits.count("design") >= 2 and qa_splits.count("held-out") >= 2
    for task in (reference_cls, reference_pose, reference_nat, reference_qa):
        assert set(task.REFERENCE) <= set(task.REGIMES) and task.TOLERANCE > 0
    # Every task of the package has a reference task for the benchmark.
    for name in reloss.TASKS:
        assert benchmark_training.reference_task(name).REGIMES


def test_mnist_regimes_are_in_both_splits():
    """Real MNIST in the cls matrix: some regimes in the design split, some held out, all on a
    balanced training subset (a long-tailed one is a run option, not a regime here)."""
    mnist = {name: r for name, r in reference_cls.REGIMES.items()
             if r.options.get("data") == "mnist"}
    by_split = {split: [name for name, r in mnist.items() if r.split == split]
                for split in ("design", "held-out")}
    assert by_split == {
        "design": ["mnist-cnn-clean-sgd-10", "mnist-cnn-n40-sgd-20", "mnist-mlp-clean-adamw-10"],
        "held-out": ["mnist-cnn-clean-adamw-10", "mnist-cnn-n20-adamw-20",
                     "mnist-mlp-clean-sgd-10", "mnist-mlp-n40-adamw-20", "mnist-mlp-n20-sgd-20"]}
    options = [r.options for r in mnist.values()]
    assert {o["model"] for o in options} == {"cnn28", "mlp28"}
    assert {o["noise"] for o in options} == {0.0, 0.2, 0.4}
    assert {o["optimizer"] for o in options} == {"sgd", "adamw"}
    assert all(o["per_class"] >= 500 and "imbalance" not in o for o in options)
    for split, names in by_split.items():
        assert set(names) <= set(select(reference_cls.REGIMES, reference_cls.REFERENCE, [split]))


@pytest.fixture
def evaluated_sizes(monkeypatch):
    """The number of test images behind each point of a cls run's curve."""
    sizes = []
    accuracy = reference_cls.accuracy

    def recorded(net, images, labels, *args):
        sizes.append(labels.numel())
        return accuracy(net, images, labels, *args)

    monkeypatch.setattr(reference_cls, "accuracy", recorded)
    return sizes


def test_mnist_final_point_is_over_the_full_test_set(evaluated_sizes):
    """A regime's run (one epoch here, not the regime's ten): the points along training on the
    fixed 1,000-image draw, the final one on all 10,000 test images; quick, every point on the
    draw."""
    result = reference_cls.run("mnist-mlp-clean-adamw-10", reference_cls.original_loss, 0,
                               epochs=1)
    assert evaluated_sizes == [1000] * 9 + [10000]
    assert [x for x, _ in result["curve"]] == pytest.approx([k / 10 for k in range(1, 11)])
    assert result["final"] > 80
    sets = reference_cls.mnist_data(1000)
    assert torch.equal(sets["test"][1], data.mnist("test")[1])
    assert sets["train"][1].bincount().tolist() == [1000] * 10
    assert sets["train"][0].shape == (10000, 1, 28, 28)
    evaluated_sizes.clear()
    reference_cls.run("mnist-mlp-clean-adamw-10", reference_cls.original_loss, 0, quick=True)
    assert set(evaluated_sizes) == {1000}
    assert reference_cls.mnist_data(1000, quick=True)["train"][1].bincount().tolist() == [
        reference_cls.MNIST_QUICK_PER_CLASS] * 10


def test_mnist_noise_and_long_tail_options():
    """Label noise flips the stated share of the training labels, a fixed draw; ``imbalance``
    keeps data.long_tailed's counts (the largest class ``per_class``), and train() trains on
    them."""
    clean = reference_cls.mnist_data(500)["train"]
    noisy = reference_cls.mnist_data(500, noise=0.4)["train"]
    assert torch.equal(clean[0], noisy[0])
    assert abs(float((clean[1] != noisy[1]).float().mean()) - 0.4) < 0.02
    assert torch.equal(noisy[1], reference_cls.mnist_data(500, noise=0.4)["train"][1])
    counts = [round(200 * 10 ** (-c / 9)) for c in range(10)]  # 200 down to 20
    assert counts == data.long_tailed_counts(10, 200) and counts[-1] == 20
    sets = reference_cls.mnist_data(200, imbalance=10)
    assert sets["train"][1].bincount().tolist() == counts
    assert sets["test"][1].numel() == 10000
    seen = []

    def loss(logits, labels, weight):
        seen.append(labels)
        return reference_cls.original_loss(logits, labels, weight)

    options = dict(data="mnist", model="mlp28", per_class=200, imbalance=10, noise=0.0,
                   optimizer="adamw", epochs=1)
    result = reference_cls.train(options, loss, 0)
    assert torch.cat(seen).bincount().tolist() == counts
    assert len(result["curve"]) == 10


@pytest.mark.parametrize("options, message", [
    (dict(data="cifar"), r"'data' should be 'digits' or 'mnist' but got 'cifar'"),
    (dict(data="mnist", per_class=100, imbalance=0.5, noise=0.0),
     r"'per_class' and 'imbalance' should be at least 1 but got 100 and 0.5"),
    (dict(data="mnist", per_class=100, noise=1.0), r"'noise' should be in \[0, 1\) but got 1.0"),
    (dict(data="mnist", model="cnn32", per_class=10, noise=0.0, epochs=1),
     r"'model' should be one of \('cnn', 'mlp', 'resnet20', 'cnn28', 'mlp28'\) but got 'cnn32'"),
])
def test_bad_run_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        reference_cls.train(options, reference_cls.original_loss, 0)


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
    (["--task", "cls", "--original-weight", "1", "-1"], r"--original-weight should be finite "
                                                        r"numbers >= 0 but got -1.0"),
    (["--task", "cls", "--regimes", "design", "cifar"], r"'--regimes' takes 'reference', 'all', "
                                                        r"'design', 'held-out' or regime names "
                                                        r"\(clean, noisy, .*\) but got 'cifar'"),
    (["--task", "segmentation"], r"argument --task: invalid choice: 'segmentation'"),
    (["--task", "cls", "--label-smoothing", "0.1"], r"--label-smoothing should be in \[0, 1\), "
                                                    r"and is for --task nat only"),
    (["--task", "nat", "--label-smoothing", "1"], r"--label-smoothing should be in \[0, 1\)"),
])
def test_bad_arguments_are_refused_before_training(args, message, tmp_path, capsys, monkeypatch):
    def no_training(*_, **__):
        raise AssertionError("training started")

    monkeypatch.setattr(benchmark_training.experiment, "run_all", no_training)
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


def test_label_smoothing_is_the_regimes_unless_given():
    """--label-smoothing E applies to every regime; without it each nat regime's own."""
    smoothed, plain = reference_nat.REGIMES["a-ls"], reference_nat.REGIMES["default"]
    assert benchmark_training.label_smoothing(None, smoothed) == 0.1
    assert benchmark_training.label_smoothing(None, plain) == 0.0
    assert benchmark_training.label_smoothing(0.0, smoothed) == 0.0
    assert benchmark_training.label_smoothing(0.2, plain) == 0.2
    assert benchmark_training.label_smoothing(None, reference_cls.REGIMES[
        next(iter(reference_cls.REGIMES))]) == 0.0


def test_a_surrogate_only_run_pairs_with_an_earlier_original_arm(tmp_path, capsys):
    """tools/compare_runs: a seed fixes the original arm, so a '--arms surrogate' run compared with
    an earlier run's original arm gives the earlier run's own paired figures."""
    from tools.benchmarks import compare_runs

    common = ["--task", "cls", "--regimes", "mlp-clean-sgd-10", "--quick", "--seeds", "2"]
    full = benchmark_training.main(common + ["--arms", "original", "surrogate",
                                             "--out", str(tmp_path / "full")])
    benchmark_training.main(common + ["--arms", "surrogate", "--out", str(tmp_path / "alone")])
    baseline = json.loads((tmp_path / "full" / "results.json").read_text())
    alone = json.loads((tmp_path / "alone" / "results.json").read_text())
    [(regime, arm, paired)] = compare_runs.compare(baseline, alone)
    assert (regime, arm) == ("mlp-clean-sgd-10", "surrogate")
    expected = full["results"][regime]["surrogate"]["paired"]
    assert paired.differences == pytest.approx(expected["differences"])
    capsys.readouterr()
    compare_runs.main([str(tmp_path / "full" / "results.json"),
                       str(tmp_path / "alone" / "results.json")])
    assert f"| mlp-clean-sgd-10 | surrogate | {paired.format(2)} |" in capsys.readouterr().out


def test_compare_runs_pairs_another_baseline_arm_and_proxy_runs(tmp_path, capsys):
    """--baseline-arm pairs with an arm other than 'original' (an earlier surrogate's default);
    --proxy pairs one arm of qa_proxy results (several files merged by seed) with another's."""
    from tools.benchmarks import compare_runs

    def runs(finals):
        return dict(runs=[dict(seed=s, final=f) for s, f in finals.items()])

    baseline = dict(results=dict(r=dict(original=runs({0: 1.0, 1: 2.0}),
                                        mixed=runs({0: 3.0, 1: 5.0}))))
    candidate = dict(results=dict(r=dict(surrogate=runs({0: 4.0, 1: 4.0}))))
    [(_, _, paired)] = compare_runs.compare(baseline, candidate, "mixed")
    assert paired.differences == [1.0, -1.0]
    assert compare_runs.compare(baseline, candidate, "scaled") == []

    def proxy(path, finals):
        curves = {"ReLossQA": [dict(seed=s, curve=[dict(epoch=1.0, EM=em, F1=f1)])
                               for s, (em, f1) in finals.items()]}
        path.write_text(json.dumps(dict(curves=curves)))
        return str(path)

    first = proxy(tmp_path / "a.json", {0: (10.0, 40.0)})
    second = proxy(tmp_path / "b.json", {1: (20.0, 41.0)})
    new = proxy(tmp_path / "new.json", {0: (4.0, 41.0), 1: (16.0, 41.0)})
    capsys.readouterr()
    compare_runs.main(["--proxy", "ReLossQA", first, second, "--against", new])
    out = capsys.readouterr().out
    assert "| EM | -5.00 +- 1.00 (lower) | -6.00 | 0, 1 |" in out
    assert "| F1 | +0.50 +- 0.50 (tie) | +0.00 | 0, 1 |" in out
    with pytest.raises(SystemExit):
        compare_runs.main(["--proxy", "default", first, "--against", new])
    assert ("not a tools/benchmarks/qa_proxy.py result with a 'default' arm"
            in capsys.readouterr().err)


def test_compare_runs_merges_a_run_split_by_seed(tmp_path, capsys):
    """--merge joins parts of one run (--first-seed, a process each) and pairs each arm with the
    merged baseline arm; the mean over regimes is per arm, with the SE of per-seed means."""
    from tools.benchmarks import compare_runs

    def part(path, seeds, offset):
        def runs(base):
            return dict(runs=[dict(seed=s, final=base + offset[s]) for s in seeds])
        results = {regime: dict(original=runs(10.0), surrogate=runs(10.0 + shift),
                                **{"mixed@1": runs(9.0)})
                   for regime, shift in (("a", 1.0), ("b", 3.0))}
        path.write_text(json.dumps(dict(task="qa", quick=False, sha256="x" * 64,
                                        checkpoint="qa", results=results)))
        return str(path)

    offset = {0: 0.0, 1: 5.0, 2: -1.0, 3: 2.0}
    first = part(tmp_path / "s0.json", [0, 1], offset)
    second = part(tmp_path / "s2.json", [2, 3], offset)
    capsys.readouterr()
    compare_runs.main(["--merge", first, second])
    out = capsys.readouterr().out
    assert "| a | surrogate | +1.00 +- 0.00" in out and "| b | mixed@1 | -1.00 +- 0.00" in out
    assert "surrogate: mean over regimes +2.00 +- 0.00 (per-seed means over regimes, 4 seeds), " \
           "lowest +1.00" in out
    assert "mixed@1: mean over regimes -1.00" in out
    compare_runs.main(["--merge", "--baseline-arm", "surrogate", first, second])
    out = capsys.readouterr().out
    assert "| a | mixed@1 | -2.00 +- 0.00" in out and "| a | surrogate |" not in out
    with pytest.raises(SystemExit):
        compare_runs.main(["--merge", first, first])
    assert "seed(s) [0, 1] are in another file too" in capsys.readouterr().err


def test_scaled_and_pinned_arms_are_the_two_losses_rescaled_by_c():
    """'scaled' is c x the original loss and 'pinned' the surrogate / c, c the surrogate's median
    gradient norm over the original's on synthetic chunks."""
    surrogate = reloss.load_surrogate("cls")
    scale = benchmark_training.gradient_scale(surrogate, "cls")
    assert 0.1 < scale < 10
    functions = benchmark_training.loss_functions(reference_cls, surrogate, 1.0,
                                                  scale=scale)
    logits, labels = torch.randn(32, 10), torch.randint(10, (32,))
    torch.testing.assert_close(functions["scaled"](logits, labels),
                               scale * functions["original"](logits, labels))
    torch.testing.assert_close(functions["pinned"](logits, labels),
                               surrogate(logits, labels) / scale)


def test_mnist_unused_images_are_neither_trained_on_nor_the_test_set():
    """cls_predictions stores logits on these: MNIST training images outside a regime's
    balanced subset, with their true labels, a fixed draw."""
    images, labels = reference_cls.mnist_unused(500, 300, 1)
    assert images.shape == (300, 1, 28, 28) and labels.shape == (300,)
    again = reference_cls.mnist_unused(500, 300, 1)
    assert torch.equal(images, again[0]) and torch.equal(labels, again[1])
    rows = {row.numpy().tobytes() for row in images.flatten(1)}
    trained = reference_cls.mnist_data(500)["train"][0].flatten(1)
    assert not rows & {row.numpy().tobytes() for row in trained}
    tested = reference_cls.mnist_data(500)["test"][0].flatten(1)
    assert not rows & {row.numpy().tobytes() for row in tested}
    with pytest.raises(ValueError, match="'count' should be in"):
        reference_cls.mnist_unused(500, 60000, 1)


@pytest.mark.slow
def test_cls_predictions_stores_design_snapshots_and_refuses_the_rest(tmp_path, capsys):
    from reloss.predictions import load_predictions
    from tools.benchmarks import cls_predictions

    for regime in ("clean", "mnist-cnn-clean-adamw-10"):  # digits; held out
        with pytest.raises(SystemExit):
            cls_predictions.main(["--regimes", regime, "--out", str(tmp_path / "x.pt")])
        assert "MNIST design regimes" in capsys.readouterr().err
    out = tmp_path / "preds.pt"
    cls_predictions.main(["--regimes", "mnist-mlp-clean-adamw-10", "--arms", "original",
                          "--seeds", "1", "--images", "200", "--out", str(out)])
    stored = torch.load(out, weights_only=True)
    assert [s["done"] for s in stored["snapshots"]] == pytest.approx(
        [k / 10 for k in range(1, 11)])
    assert stored["logits"].shape == (2000, 10)
    assert torch.equal(stored["labels"][:200], reference_cls.mnist_unused(1000, 200, 1)[1])
    assert stored["snapshots"][-1]["accuracy"] > stored["snapshots"][0]["accuracy"] - 5
    assert stored["snapshots"][-1]["accuracy"] > 80
    chunks = load_predictions(str(out), "cls", 128)
    assert len(chunks) == 10  # one chunk of 128 per snapshot of 200
    with pytest.raises(SystemExit):
        cls_predictions.main(["--regimes", "mnist-mlp-clean-adamw-10", "--out", str(out)])
    assert "--force" in capsys.readouterr().err


def test_cls_slope_measures_the_gradient_ratio_at_one_sample(capsys):
    from tools.benchmarks import cls_slope

    for value in (0.01, 1.0, 12.0):
        logits, label = cls_slope.one_sample(value)
        assert float(F.cross_entropy(logits, label)) == pytest.approx(value, rel=1e-6)

    def doubled(logits, label, weight):
        return 2 * F.cross_entropy(logits, label)

    assert cls_slope.slope_ratios(doubled, grid=(0.1, 3.0)) == pytest.approx([2.0, 2.0])
    lines = cls_slope.main(["cls"])
    ratios = [float(cell) for cell in lines[-1].strip("|").split("|")[1:]]
    assert len(ratios) == len(cls_slope.GRID) and all(r >= 0 for r in ratios)
    with pytest.raises(SystemExit):
        cls_slope.main(["cls-balanced"])
    assert "not class-aware" in capsys.readouterr().err


@pytest.mark.slow
def test_cls_noisy_pretrain_ranks_by_the_true_labels(tmp_path, capsys):
    """The chunks: about half keep every label, the others flip up to 40% of them, and the
    metric the surrogate learns to rank by is the accuracy on the true labels."""
    from reloss import load_surrogate
    from reloss.tasks import get_task
    from tools.benchmarks import cls_noisy_pretrain

    generator = torch.Generator().manual_seed(0)
    logits, seen, clean = cls_noisy_pretrain.noisy_chunks(400, 128, 10, generator, (0.85, 0.99))
    flipped = (seen != clean).float().mean(-1)
    assert 0.35 < float((flipped == 0).float().mean()) < 0.65
    assert float(flipped.max()) <= 0.5 and float(flipped.mean()) > 0.05
    task = get_task("cls")
    surrogate = task.surrogate_class(None)(temperatures=[1.0])
    data = cls_noisy_pretrain.prepared(surrogate, task, 192, generator)
    assert data["metric"].shape == (192,)
    figures = cls_noisy_pretrain.main(["--out", str(tmp_path), "--train-chunks", "192",
                                       "--steps", "5"])
    assert -1 <= figures["surrogate"]["full"] <= 1
    assert load_surrogate(str(tmp_path / "surrogate.pt")).task == "cls"
    with pytest.raises(SystemExit):
        cls_noisy_pretrain.main(["--out", str(tmp_path)])
    assert "--force" in capsys.readouterr().err
