"""tools/benchmarks/step.py --task qa: a BERT QA model with its default loss and with ReLossQA,
from the same weights (shrunk here)."""
import argparse

import pytest
import torch

from tools.benchmarks import step as benchmark_step


@pytest.fixture
def small_bert(monkeypatch):
    monkeypatch.setattr(benchmark_step, "QA_VOCABULARY", 1100)
    monkeypatch.setattr(benchmark_step, "QA_SHAPE", dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))


def test_qa_case_builds_both_losses_from_the_same_weights(small_bert):
    from reloss.transformers import ReLossQA

    models, forward, title = benchmark_step.qa_case(argparse.Namespace(batch=3, tokens=64),
                                                    torch.device("cpu"))
    (base, none), (ours, reloss) = models["default loss"], models["ReLossQA"]
    assert none is None and isinstance(reloss, ReLossQA)
    theirs = ours.state_dict()
    for key, value in base.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    assert "d 32, 1 layers" in title and "batch 3 of 64 tokens" in title
    losses = [forward(entry).detach() for entry in models.values()]
    assert all(loss.dim() == 0 and torch.isfinite(loss) for loss in losses)
    assert float(losses[0]) != pytest.approx(float(losses[1]))


def test_qa_step_benchmark_runs_and_checks_tokens(small_bert, capsys):
    result = benchmark_step.main(["--task", "qa", "--steps", "1", "--warmup", "0", "--batch", "2",
                                  "--tokens", "64", "--device", "cpu"])
    assert set(result["medians"]) == {"default loss", "ReLossQA"} and result["ratio"] > 0
    assert "ratio ReLossQA / default loss" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        benchmark_step.main(["--task", "qa", "--tokens", "32", "--device", "cpu"])
    assert "--tokens should be at least 64 (a question and a passage)" in capsys.readouterr().err
