"""The qa reference task of tools/benchmarks/training.py: its data, its loss, its metric and a
quick regime-matrix run through the benchmark's command line."""
import json
import math

import pytest
import torch

import reloss
from reloss.tasks.qa import qa_cross_entropy
from tools.benchmarks import qa_proxy
from tools.benchmarks import training as benchmark_training
from tools.benchmarks.reference import qa


def test_encoding_puts_the_gold_span_on_the_answer():
    examples = qa_proxy.generate(40, 3, facts=(5, 6), answer_lengths=(5, 15))
    encoded = qa.encode(examples)
    index = qa_proxy.vocabulary()
    for i, example in enumerate(examples):
        start, end = encoded["positions"][i].tolist()
        answer = "".join(index[t] for t in encoded["ids"][i, start:end + 1].tolist())
        assert answer == example["answers"][0]
        assert 5 <= len(answer) <= 15
        passage = encoded["context"][i].nonzero().flatten()
        first = int(encoded["first"][i])
        assert passage.tolist() == list(range(first, first + len(example["context"])))
        # Question tokens are type 0, passage and its [SEP] type 1, padding masked out.
        length = int(encoded["attention"][i].sum())
        assert encoded["types"][i, :first].sum() == 0
        assert encoded["types"][i, first:length].eq(1).all()
        assert encoded["ids"][i, length:].eq(0).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(answer_lengths=(0, 4)), "'answer_lengths' should be None or"),
    (dict(answer_lengths=(5, 2)), "'answer_lengths' should be None or"),
    (dict(facts=(3, 2)), "'facts' should be"),
    (dict(facts=(1, 9)), "'facts' should be"),
])
def test_generate_refuses_bad_lengths(kwargs, message):
    with pytest.raises(ValueError, match=message):
        qa_proxy.generate(4, 0, **kwargs)


def test_generate_keeps_the_proxys_data_by_default():
    """The proxy's set is unchanged: answers of 1-10 characters, mostly short."""
    lengths = [len(e["answers"][0]) for e in qa_proxy.generate(400, 0)]
    assert min(lengths) == 1 and max(lengths) <= 10 and sorted(lengths)[200] <= 3
    assert qa_proxy.generate(50, 0) == qa_proxy.generate(50, 0, facts=(2, 3))


def test_original_loss_is_the_default_qa_loss_and_takes_the_surrogates_call():
    pred, target, weight = qa.timing_inputs(torch.Generator().manual_seed(0))
    assert pred.shape == (32, 2, 384) and target.shape == (32, 2) and weight.shape == (32, 384)
    torch.testing.assert_close(qa.original_loss(pred, target, weight),
                               qa_cross_entropy(pred[None], target[None]).squeeze(0))
    surrogate = reloss.load_surrogate("qa")
    assert math.isfinite(float(surrogate(pred, target, weight)))
    with pytest.raises(ValueError, match="'regime' should be one of"):
        qa.run("squad", qa.original_loss, 0, quick=True)
    with pytest.raises(ValueError, match="'answers' should be one of"):
        qa.data("medium")


def test_f1_scores_the_decoded_answer_string():
    """Logits that point at the gold span score 100; at the passage's first character, the F1 of
    that one character against the answer."""
    train, dev, examples = qa.data("short", (2, 3), 8, 16)
    net = qa.model(dev["ids"].shape[1], 0)

    class Pointer(torch.nn.Module):
        def __init__(self, positions):
            super().__init__()
            self.positions = positions

        def forward(self, input_ids, **_):
            logits = torch.zeros(len(input_ids), 2, input_ids.shape[1])
            logits.scatter_(-1, self.positions[:len(input_ids), :, None], 10.0)
            return type("Out", (), dict(start_logits=logits[:, 0], end_logits=logits[:, 1]))

    assert qa.f1(Pointer(dev["positions"]), dev, examples) == pytest.approx(100.0)
    first = dev["first"][:, None].repeat(1, 2)
    expected = [2 / (1 + len(e["answers"][0])) if e["context"][0] in e["answers"][0] else 0.0
                for e in examples]
    assert qa.f1(Pointer(first), dev, examples) == pytest.approx(100 * sum(expected) / 16)
    assert 0 <= qa.f1(net, dev, examples) <= 100


def test_regime_matrix_covers_answer_and_passage_lengths_and_schedules():
    splits = [r.split for r in qa.REGIMES.values()]
    assert splits.count("design") >= 2 and splits.count("held-out") >= 2
    options = [r.options for r in qa.REGIMES.values()]
    assert {o["answers"] for o in options} == set(qa.ANSWERS)
    assert len({o["facts"] for o in options}) >= 2 and len({o["lr"] for o in options}) >= 2
    assert len({o["epochs"] for o in options}) >= 2
    assert set(qa.REFERENCE) <= set(qa.REGIMES) and qa.TOLERANCE > 0


def test_quick_matrix_of_two_regimes_through_the_benchmark(tmp_path, capsys):
    """One design and one held-out regime, two seeds, every default arm: a real tiny BERT trains
    in each, and the results pair every arm with the original loss seed by seed."""
    design = next(n for n, r in qa.REGIMES.items() if r.split == "design")
    held_out = next(n for n, r in qa.REGIMES.items() if r.split == "held-out")
    out = tmp_path / "qa"
    record = benchmark_training.main(["--task", "qa", "--quick", "--seeds", "2", "--regimes",
                                      design, held_out, "--out", str(out)])
    printed = capsys.readouterr().out
    assert list(record["results"]) == [design, held_out]
    # The shipped surrogate holds the default loss: the default arm is the surrogate alone, and
    # the mixed arm adds 1 x the default loss (the benchmark's choice where the default is 0).
    assert reloss.get_task("qa").default_original_weight == 0
    assert record["metric"] == qa.METRIC and record["default_arm"] == "surrogate"
    assert record["mixed_arms"] == {"mixed": 1.0}
    for by_arm in record["results"].values():
        assert list(by_arm) == ["original", "surrogate", "mixed"]
        originals = {r["seed"]: r["final"] for r in by_arm["original"]["runs"]}
        assert sorted(originals) == [0, 1]
        for arm, result in by_arm.items():
            for run in result["runs"]:
                assert [x for x, _ in run["curve"]] == pytest.approx([k / 10 for k in
                                                                       range(1, 11)])
                assert all(0 <= f1 <= 100 for _, f1 in run["curve"])
                assert run["final"] == run["curve"][-1][1]
            if arm != "original":
                finals = {r["seed"]: r["final"] for r in result["runs"]}
                assert result["paired"]["differences"] == pytest.approx(
                    [finals[s] - originals[s] for s in (0, 1)])
        assert 0 < by_arm["mixed"]["gradient_share"] < 1
        # Seeds differ (initialisation and data order), arms differ (the loss).
        assert originals[0] != originals[1]
    for split, name in (("design", design), ("held-out", held_out)):
        summary = record["matrix"][split]["surrogate"]
        assert summary["regimes"] == 1
        assert summary["mean"] == pytest.approx(
            record["results"][name]["surrogate"]["paired"]["mean"])
    assert "| **design split** | design | 1 regimes |" in printed
    assert "| **held-out split** | held-out | 1 regimes |" in printed
    assert {p.name for p in out.iterdir()} == {"results.json", "results.md", "curves.png",
                                               "matrix.png"}
    assert json.loads((out / "results.json").read_text())["task"] == "qa"


def test_a_seed_repeats_its_run():
    name = qa.REFERENCE[0]
    assert (qa.run(name, qa.original_loss, 0, quick=True)
            == qa.run(name, qa.original_loss, 0, quick=True))


def test_stored_predictions_along_training_load_for_pretraining(tmp_path, capsys):
    from reloss.predictions import load_predictions

    path = tmp_path / "qa.pt"
    finals = qa.store_predictions(str(path), qa.original_loss, [0], "short-3f", count=8,
                                  quick=True)
    assert len(finals) == 1 and 0 <= finals[0] <= 100
    groups = load_predictions(str(path), "qa", 4, torch.Generator().manual_seed(0))
    assert len(groups) == 10  # a snapshot at every tenth of training, 2 chunks of 4 questions
    logits, positions, context = groups[0]
    assert logits.shape[:3] == (2, 4, 2) and positions.shape == (2, 4, 2)
    assert context.shape == (2, 4, logits.shape[-1])
    # Gold answers lie in the passage, as the decoder requires.
    inside = context.gather(-1, positions).bool()
    assert bool(inside.all())
    with pytest.raises(SystemExit):
        qa.main(["--out", str(path)])
    assert "already exists" in capsys.readouterr().err
