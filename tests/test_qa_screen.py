"""tools/benchmarks/qa_screen.py: fixed QA loss forms trained on the qa regime matrix, paired with
the default loss."""
import json

import pytest
import torch

pytest.importorskip("transformers")
from reloss.tasks import qa  # noqa: E402
from tools.benchmarks import qa_screen  # noqa: E402


def test_variants_are_the_losses_they_name():
    torch.manual_seed(0)
    logits, positions = torch.randn(3, 2, 10), torch.tensor([[1, 2], [4, 4], [0, 7]])
    default = qa.qa_cross_entropy(logits[None], positions[None]).squeeze()
    span = qa.span_cross_entropy(logits, positions).mean()
    risk = (1 - qa.expected_decoded_f1(logits, positions)).mean()
    cases = {"default": default, "span": span, "half": (span + default) / 2,
             "span-risk:0.3": span + 0.3 * risk,
             "risk:0.5:0.3": default + 0.5 * (1 - qa.expected_span_f1(logits / 0.3,
                                                                       positions)).mean()}
    for name, expected in cases.items():
        got = qa_screen.variant(name)(logits, positions, None)
        assert float(got) == pytest.approx(float(expected), rel=1e-6), name


@pytest.mark.parametrize("name", ["joint", "risk:1", "span-risk:x"])
def test_bad_variant_is_refused(name):
    with pytest.raises(ValueError, match="'--variants' should name"):
        qa_screen.variant(name)


def test_quick_screen_pairs_each_variant_with_the_default_loss(tmp_path, capsys):
    out = tmp_path / "screen"
    argv = ["--out", str(out), "--seeds", "2", "--quick", "--variants", "span"]
    finals = qa_screen.main(argv)
    assert set(finals) == {"default", "span"} and set(finals["span"]["proxy"]) == {0, 1}
    assert finals["span"]["proxy"] != finals["default"]["proxy"]  # a different loss trained
    assert "| proxy | span |" in capsys.readouterr().out
    record = json.loads((out / "results.json").read_text())
    assert record["finals"]["span"]["proxy"]["0"] == finals["span"]["proxy"][0]
    with pytest.raises(SystemExit):
        qa_screen.main(argv)
    assert "pass --force" in capsys.readouterr().err
