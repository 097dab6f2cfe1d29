"""One class per surrogate form: each task's default class builds the form that ships, every form
round-trips through a checkpoint, and checkpoints written when one class held several forms
(the shipped 'nat' and 'qa' among them, whose bytes are recorded and must not change) load,
through the task's ``upgrade``, into the class of their form with the same values as before."""
import inspect
import os

import pytest
import torch

import reloss
from reloss.checkpoint import CHECKPOINT_DIR, FORMAT, VERSION, save_surrogate, sha256_file, shipped
from reloss.tasks import TASKS
from reloss.tasks.nat import SequenceSurrogate, TokenSequenceSurrogate
from reloss.tasks.qa import QARiskSurrogate, QAStepsSurrogate, QASurrogate

FORMS = [(task, cls) for task in TASKS for cls in TASKS[task].surrogate_classes.values()]


def sentences():
    """Logits (N, T, V) float64, targets (N, T) padded with 1 and weights (N, T); sentence 2 is
    all padding."""
    generator = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(4, 7, 30, generator=generator, dtype=torch.float64)
    weight = (torch.arange(7) < torch.tensor([7, 3, 0, 5])[:, None]).double()
    target = torch.randint(4, 30, (4, 7), generator=generator).masked_fill(weight == 0, 1)
    return logits, target, weight


def questions():
    """Start and end logits (N, 2, L) float64 and gold (start, end) positions (N, 2)."""
    generator = torch.Generator().manual_seed(1)
    logits = 2 * torch.randn(5, 2, 40, generator=generator, dtype=torch.float64)
    return logits, torch.tensor([[2, 4], [5, 5], [0, 0], [7, 11], [10, 39]])


def outputs(surrogate, pred, *args):
    """Per-sample values, the mean and the mean's gradient, in float64."""
    surrogate = surrogate.double()
    leaf = pred.clone().requires_grad_()
    mean = surrogate(leaf, *args)
    (grad,) = torch.autograd.grad(mean, leaf)
    return surrogate(leaf, *args, reduction="none").detach(), mean.detach(), grad


def chunk(task):
    """One small synthetic chunk of the task: (pred, target[, weight])."""
    spec = TASKS[task]
    sampled = spec.sample(1, 4, generator=torch.Generator().manual_seed(3),
                          **spec.sample_kinds[0])
    return [x[0] for x in sampled]


def perturbed(cls):
    """The form with random parameters (not the ones it starts with)."""
    torch.manual_seed(0)
    surrogate = cls()
    with torch.no_grad():
        for parameter in surrogate.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return surrogate


def write(path, task, architecture, state_dict):
    """A checkpoint as save_surrogate writes it, with the given architecture dict."""
    torch.save(dict(format=FORMAT, version=VERSION, task=task, architecture=architecture,
                    metric="m", state_dict=state_dict), path)
    return str(path)


# The shipped checkpoints, unchanged bytes, in the classes of their forms.

# Values the shipped surrogates gave on these inputs before each form had its own class (one
# class with flags then: SequenceSurrogate(ngrams=4), QASurrogate(joint=True)).
SHIPPED_BEFORE = {
    "nat": ([6.864814377756408, 6.997229368965482, 0.0, 7.031667864250002], 6.946915204829421,
            0.07884021386703875),
    "qa": ([6.5688102644901125, 10.772447066895396, 8.407200718430145, 7.656822091355043,
            7.3740609330558655], 8.155868214845313, 0.1408448353650712),
}


@pytest.mark.parametrize("name, cls, config, inputs", [
    ("nat", SequenceSurrogate, {"ngrams": 4, "ngram_weight": 0.5}, sentences),
    ("qa", QASurrogate, {"ce_weight": 0.5, "risk_weight": 1.0}, questions),
])
def test_shipped_checkpoints_load_into_their_forms_with_the_same_values(name, cls, config,
                                                                         inputs):
    entry = shipped()[name]
    path = os.path.join(CHECKPOINT_DIR, entry["file"])
    assert sha256_file(path) == entry["sha256"]  # the bytes recorded when it shipped
    # Written by the class that held several forms: it loads through the task's upgrade.
    stored = torch.load(path, weights_only=True)["architecture"]
    assert stored["type"] == cls.__name__ and set(stored) > {"type", *config}
    surrogate = reloss.load_surrogate(name)
    assert type(surrogate) is cls and surrogate.config() == config
    assert TASKS[name].surrogate is cls and cls().config() == config  # the default is the form
    values, mean, grad = outputs(surrogate, *inputs())
    expected_values, expected_mean, expected_grad_sq = SHIPPED_BEFORE[name]
    assert values.tolist() == pytest.approx(expected_values, rel=1e-6, abs=1e-9)
    assert float(mean) == pytest.approx(expected_mean, rel=1e-6)
    assert float(grad.square().sum()) == pytest.approx(expected_grad_sq, rel=1e-6)


@pytest.mark.parametrize("task", list(TASKS))
def test_default_constructor_builds_what_ships(task):
    surrogate = reloss.load_surrogate(task)
    assert type(surrogate) is TASKS[task].surrogate
    assert TASKS[task].surrogate().config() == surrogate.config()


# Checkpoints written when one class held several forms.

OLD_TOKEN = dict(dim=32, layers=2, heads=4, floor=-20.0, reweight=True, spread=0.5)
OLD_QA = dict(temperatures=[1.0, 0.1], knots=16, span=8.0)


@pytest.mark.parametrize("task, old, cls, config, inputs", [
    ("nat", dict(type="SequenceSurrogate", **OLD_TOKEN, ngrams=3, ngram_weight=0.7),
     SequenceSurrogate, dict(ngrams=3, ngram_weight=0.7), sentences),
    ("nat", dict(type="SequenceSurrogate", **OLD_TOKEN), TokenSequenceSurrogate, OLD_TOKEN,
     sentences),
    ("nat", dict(type="SequenceSurrogate", **{**OLD_TOKEN, "reweight": False, "dim": 16}),
     TokenSequenceSurrogate, {**OLD_TOKEN, "reweight": False, "dim": 16}, sentences),
    # The first design had no 'reweight': the transformer gave the value (the free form).
    ("nat", dict(type="SequenceSurrogate", dim=16, layers=1, heads=2, floor=-20.0),
     TokenSequenceSurrogate, dict(dim=16, layers=1, heads=2, floor=-20.0, reweight=False,
                                  spread=0.5), sentences),
    ("qa", dict(type="QASurrogate", **OLD_QA, joint=True, risk_weight=0.7, ce_weight=0.2),
     QASurrogate, dict(ce_weight=0.2, risk_weight=0.7), questions),
    ("qa", dict(type="QASurrogate", **OLD_QA, risk=True, risk_weight=0.7), QARiskSurrogate,
     dict(risk_weight=0.7), questions),
    ("qa", dict(type="QASurrogate", **{**OLD_QA, "knots": 8}), QAStepsSurrogate,
     {**OLD_QA, "knots": 8}, questions),
], ids=["nat-ngrams", "nat-token", "nat-free", "nat-first", "qa-joint", "qa-risk", "qa-steps"])
def test_checkpoint_of_the_class_that_held_several_forms_loads_into_its_form(
        tmp_path, task, old, cls, config, inputs):
    surrogate = perturbed(lambda: cls(**config)).eval().requires_grad_(False)  # as loaded
    path = write(tmp_path / "old.pt", task, old, surrogate.state_dict())
    loaded = reloss.load_surrogate(path)
    assert type(loaded) is cls and loaded.config() == config
    for got, expected in zip(outputs(loaded, *inputs()), outputs(surrogate, *inputs()),
                             strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_upgrade_keeps_only_the_arguments_of_the_form():
    nat, qa = TASKS["nat"].upgrade, TASKS["qa"].upgrade
    assert nat(dict(type="SequenceSurrogate", **OLD_TOKEN, ngrams=4, ngram_weight=0.5)) == \
        dict(type="SequenceSurrogate", ngrams=4, ngram_weight=0.5)
    assert nat(dict(type="SequenceSurrogate", **OLD_TOKEN, ngrams=0)) == \
        dict(type="TokenSequenceSurrogate", **OLD_TOKEN)
    assert nat(dict(type="SequenceSurrogate", dim=32, layers=2, heads=4, floor=-20.0)) == \
        dict(type="TokenSequenceSurrogate", dim=32, layers=2, heads=4, floor=-20.0,
             reweight=False)
    assert qa(dict(type="QASurrogate", **OLD_QA, joint=True, risk_weight=1.0, ce_weight=0.5)) \
        == dict(type="QASurrogate", risk_weight=1.0, ce_weight=0.5)
    assert qa(dict(type="QASurrogate", **OLD_QA, risk=True, risk_weight=1.0)) == \
        dict(type="QARiskSurrogate", risk_weight=1.0)
    assert qa(dict(type="QASurrogate", **OLD_QA)) == dict(type="QAStepsSurrogate", **OLD_QA)
    # What the current classes write passes unchanged.
    for task, cls in FORMS:
        if TASKS[task].upgrade is not None:
            current = dict(type=cls.__name__, **cls().config())
            assert TASKS[task].upgrade(dict(current)) == current


def test_an_old_checkpoint_with_an_unknown_argument_is_refused_by_name(tmp_path):
    surrogate = SequenceSurrogate()
    path = write(tmp_path / "old.pt", "nat",
                 dict(type="SequenceSurrogate", **OLD_TOKEN, ngrams=4, width=3),
                 surrogate.state_dict())
    with pytest.raises(ValueError, match=r"old.pt: field 'architecture' does not fit "
                                         r"SequenceSurrogate: .*'width'"):
        reloss.load_surrogate(path)


# Every form.

@pytest.mark.parametrize("task, cls", FORMS, ids=[cls.__name__ for _, cls in FORMS])
def test_every_form_round_trips_through_a_checkpoint(tmp_path, task, cls):
    surrogate = perturbed(cls).eval()
    path = tmp_path / "form.pt"
    save_surrogate(surrogate, path, task, "m")
    stored = torch.load(path, weights_only=True)["architecture"]
    assert stored == dict(type=cls.__name__, **surrogate.config())
    loaded = reloss.load_surrogate(str(path))
    assert type(loaded) is cls and loaded.config() == surrogate.config()
    assert loaded.frozen and not surrogate.frozen
    pred, *rest = chunk(task)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pred, *rest, reduction="none"),
                                   surrogate(pred, *rest, reduction="none"))


@pytest.mark.parametrize("task, cls", FORMS, ids=[cls.__name__ for _, cls in FORMS])
def test_a_saved_config_holds_exactly_the_arguments_of_the_form(task, cls):
    assert set(cls().config()) == set(inspect.signature(cls).parameters)
    assert cls.task == task


def test_an_unknown_type_is_refused_naming_the_tasks_classes(tmp_path):
    path = write(tmp_path / "x.pt", "qa", dict(type="SequenceSurrogate"),
                 SequenceSurrogate().state_dict())
    with pytest.raises(ValueError, match=r"x.pt: field 'architecture' should name a 'qa' "
                                         r"surrogate class \(QASurrogate, QARiskSurrogate, "
                                         r"QAStepsSurrogate\) but names 'SequenceSurrogate'"):
        reloss.load_surrogate(path)
    assert TASKS["nat"].surrogate_class() is SequenceSurrogate
    assert TASKS["nat"].surrogate_class("TokenSequenceSurrogate") is TokenSequenceSurrogate
    with pytest.raises(ValueError, match=r"'type' should be a 'nat' surrogate class "
                                         r"\(SequenceSurrogate, TokenSequenceSurrogate\) but got "
                                         r"'QASurrogate'"):
        TASKS["nat"].surrogate_class("QASurrogate")
