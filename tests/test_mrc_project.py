"""projects/mrc_macbert end to end: train.sh with each loss and evaluate.sh, on a tiny BERT from a
config and a generated SQuAD-format set; and the tools they call."""
import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from tools import evaluate_qa, finetune_qa  # noqa: E402
from tools.benchmarks import qa_proxy  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = os.path.join(ROOT, "projects", "mrc_macbert")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mrc")
    train, dev = qa_proxy.write_data(str(root / "data"), 48, 16)
    model = qa_proxy.write_tiny_bert(str(root / "model"), seed=0)
    return root, train, dev, model


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["default", "reloss"])
def test_train_and_evaluate_scripts_run_end_to_end(setup, loss):
    root, train, dev, model = setup
    out = root / f"run_{loss}"
    env = dict(os.environ, MODEL=model, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    small = ["--epochs", "2", "--batch-size", "8", "--max-length", "64", "--stride", "16",
             "--lr", "1e-3"]
    result = subprocess.run([os.path.join(PROJECT, "train.sh"), train, dev, str(out), loss,
                             *small], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"[reloss] {loss} loss, epoch 2: EM" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [point["epoch"] for point in metrics["curve"]] == [1, 2]
    assert os.path.isfile(out / "model" / "config.json")
    predictions = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert len(predictions) == 16

    scores = out / "scores.json"
    result = subprocess.run([os.path.join(PROJECT, "evaluate.sh"), str(out / "predictions.json"),
                             dev, "--out", str(scores)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("EM ") and "(16 questions)" in result.stdout
    written = json.loads(scores.read_text())
    for name in ("EM", "F1", "ROUGE-L", "BLEU-4"):  # the same answers score the same
        assert written[name] == pytest.approx(metrics["final"][name])
    # Outputs are never replaced without --force.
    result = subprocess.run([os.path.join(PROJECT, "train.sh"), train, dev, str(out), loss,
                             *small], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "pass --force" in result.stderr


def test_tools_refuse_bad_arguments(setup, tmp_path, capsys):
    root, train, dev, model = setup
    base = ["--model", model, "--train", train, "--dev", dev, "--out", str(tmp_path / "o")]
    for extra, message in ((["--stride", "600"], "--stride should be in [0, --max-length)"),
                           (["--batch-size", "0"], "--batch-size should be >= 1 but got 0"),
                           (["--loss", "mse"], "invalid choice: 'mse'")):
        with pytest.raises(SystemExit):
            finetune_qa.main(base + extra)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        finetune_qa.main([*base[:4], "--dev", str(tmp_path / "none.json"), *base[6:]])
    assert "no such file" in capsys.readouterr().err

    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({"d0": "x"}))
    with pytest.raises(SystemExit):
        evaluate_qa.main([str(answers), dev])
    assert "no answer for 15 of 16 questions" in capsys.readouterr().err


def test_evaluate_scores_perfect_answers(setup, tmp_path, capsys):
    from reloss import squad

    _, _, dev, _ = setup
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({e["id"]: e["answers"][0] for e in squad.read_squad(dev)},
                                  ensure_ascii=False), encoding="utf-8")
    scores = evaluate_qa.main([str(answers), dev])
    assert scores == {"EM": 100.0, "F1": 100.0, "ROUGE-L": 100.0, "BLEU-4": pytest.approx(100.0)}


@pytest.mark.slow
def test_qa_proxy_runs_end_to_end(tmp_path, capsys):
    from reloss import checkpoint

    out = tmp_path / "proxy"
    surrogate = tmp_path / "surrogate.pt"  # a copy of the shipped one, given by its path
    shutil.copyfile(os.path.join(checkpoint.CHECKPOINT_DIR, "qa.pt"), surrogate)
    argv = ["--out", str(out), "--seeds", "2", "--epochs", "1", "--train", "64", "--dev", "32",
            "--batch-size", "16", "--checkpoint", str(surrogate)]
    curves = qa_proxy.main(argv)
    assert set(curves) == {qa_proxy.BASELINE, qa_proxy.RELOSS}
    assert all(len(runs) == 2 and len(runs[0]) == 1 for runs in curves.values())
    printed = capsys.readouterr().out
    assert "| default loss |" in printed and "| ReLossQA |" in printed
    assert "Spearman(-loss, span F1)" in printed  # the ranking on real dev predictions
    assert {"results.md", "results.json", "curves.png", "dev_logits.pt"} <= {
        p.name for p in out.iterdir()}
    record = json.loads((out / "results.json").read_text())
    assert record["paired"]["ReLossQA"]["F1"]["seeds"] == [0, 1]
    assert record["ranking"]["surrogate"]["chunks"] >= 2  # one epoch of >= 32 windows per run
    # The checkpoint ReLossQA trained with is the one recorded.
    assert record["provenance"]["surrogates"] == {
        str(surrogate): checkpoint.sha256_file(str(surrogate))}
    with pytest.raises(SystemExit):
        qa_proxy.main(argv)
    assert "pass --force" in capsys.readouterr().err


def test_qa_proxy_passes_its_checkpoint_to_relossqa(tmp_path):
    """``--checkpoint`` reaches ReLossQA's runs; without it they use the shipped 'qa'."""
    path = tmp_path / "surrogate.pt"
    for given, expected in ((None, "qa"), (str(path), str(path))):
        argv = ["--out", str(tmp_path / "proxy")] + (["--checkpoint", given] if given else [])
        args = qa_proxy.build_parser().parse_args(argv)
        run = qa_proxy.finetune_args("m", "t.json", "d.json", "o", "reloss", 0, args)
        assert run.checkpoint == expected and run.loss == "reloss"
