import argparse
import json

import pytest

from tools.ship_surrogate import proxy_summary


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def _proxy(tmp_path, sha):
    record = dict(provenance=dict(command="python -m tools.benchmarks.nat_proxy",
                                  surrogates=dict(nat=sha)),
                  seeds=2, updates=100, paired=dict(reloss_nat=dict(mean=0.5, se=0.1)),
                  runs=dict(nat_loss=[dict(seed=0, bleu=20.0, log=[1, 2])],
                            reloss_nat=[dict(seed=0, bleu=20.5, log=[1, 2])]))
    path = tmp_path / "results.json"
    path.write_text(json.dumps(record))
    return str(path)


def test_proxy_figures_are_kept_without_the_logs(tmp_path):
    summary = proxy_summary(_Parser(), _proxy(tmp_path, "ab" * 32), dict(sha256="ab" * 32))
    assert summary["runs"] == dict(nat_loss=[dict(seed=0, bleu=20.0)],
                                   reloss_nat=[dict(seed=0, bleu=20.5)])
    assert summary["paired"]["reloss_nat"]["mean"] == 0.5 and summary["updates"] == 100


def test_proxy_of_another_checkpoint_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"--proxy .*not a proxy run that trained with this"):
        proxy_summary(_Parser(), _proxy(tmp_path, "cd" * 32), dict(sha256="ab" * 32))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read it"):
        proxy_summary(_Parser(), str(tmp_path / "bad.json"), dict(sha256="ab" * 32))


def test_qa_proxy_figures_are_kept(tmp_path):
    """tools/benchmarks/qa_proxy.py writes paired figures and curves, no per-run logs."""
    provenance = dict(command="python -m tools.benchmarks.qa_proxy", surrogates=dict(qa="ab" * 32))
    record = dict(provenance=provenance,
                  seeds=[0, 1], epochs=15, train=2000, dev=300,
                  paired=dict(ReLossQA=dict(F1=dict(mean=0.4, se=0.2))),
                  curves={"default loss": [[1, 2]], "ReLossQA": [[1, 2]]})
    path = tmp_path / "results.json"
    path.write_text(json.dumps(record))
    summary = proxy_summary(_Parser(), str(path), dict(sha256="ab" * 32))
    assert summary["paired"]["ReLossQA"]["F1"]["mean"] == 0.4 and summary["epochs"] == 15
    assert "runs" not in summary and "curves" not in summary
