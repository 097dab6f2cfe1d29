"""The ``reloss`` command: its dispatcher, its commands' argument errors, ``reloss ship``'s
records, and the console script of an installed wheel."""
import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import sysconfig

import pytest
import torch

import reloss
from reloss.cli import COMMANDS, main
from reloss.cli.ship import proxy_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_help_lists_every_command_on_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: reloss ")
    for name, (_, line) in COMMANDS.items():
        assert f"  {name}" in printed and f"{line}\n" in printed


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_names_itself_in_its_usage(name, capsys):
    with pytest.raises(SystemExit):
        main([name, "--help"])
    assert capsys.readouterr().out.startswith(f"usage: reloss {name} ")


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: COMMAND"),
    (["train", "--out", "x"], "argument COMMAND: invalid choice: 'train'"),
    (["evaluate", "cls", "--data", "absent.pt"], "reloss evaluate: error: --data 'absent.pt': "
                                                 "no such file"),
    (["ship"], "reloss ship: error: the following arguments are required: folder, name"),
])
def test_errors_name_the_command_and_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_python_dash_m_reloss_runs_the_command():
    result = subprocess.run([sys.executable, "-m", "reloss", "--help"], capture_output=True,
                            text=True, check=True)
    assert result.stdout.startswith("usage: reloss ") and "collect-predictions" in result.stdout


def test_collect_predictions_without_mmpretrain_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mmpretrain", None)  # as if it were not installed
    for name in ("cfg.py", "model.pth"):
        (tmp_path / name).write_text("")
    with pytest.raises(SystemExit):
        main(["collect-predictions", str(tmp_path / "cfg.py"), str(tmp_path / "model.pth"),
              "--out", str(tmp_path / "p.pt")])
    error = capsys.readouterr().err
    assert "reloss collect-predictions: error: needs " in error and "mmpretrain" in error
    assert "pip install reloss[mmpretrain]" in error
    assert not (tmp_path / "p.pt").exists()


def test_pretrain_without_matplotlib_writes_all_but_the_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, _find=importlib.util.find_spec:
                        None if name == "matplotlib" else _find(name, *a))
    out = tmp_path / "out"
    main(["pretrain", "--task", "cls", "--out", str(out), "--steps", "2", "--train-chunks", "64",
          "--chunks-per-step", "16", "--eval-every", "1"])
    assert sorted(p.name for p in out.iterdir()) == ["model_card.json", "results.md",
                                                     "surrogate.pt"]
    assert "no scatter.png: matplotlib is not installed; pip install reloss[pretrain]" in \
        capsys.readouterr().out


def test_evaluate_prints_the_ranking_table(tmp_path, capsys):
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(10, (512,), generator=generator)
    logits = torch.randn(512, 10, generator=generator)
    logits[torch.arange(512), labels] += torch.linspace(0, 6, 512)  # from chance to accurate
    path = tmp_path / "predictions.pt"
    torch.save(dict(task="cls", logits=logits, labels=labels, group=torch.arange(512) // 64),
               path)
    main(["evaluate", "cls", "--data", str(path), "--chunk-size", "32"])
    printed = capsys.readouterr().out
    assert "Spearman(-loss, accuracy) over chunks" in printed
    assert f"| {path} | 16 | ReLoss surrogate |" in printed


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


@pytest.mark.slow
def test_installed_wheel_learns_a_surrogate_with_the_reloss_command(built_wheel, tmp_path):
    """The wheel installed in a fresh virtual environment: its ``reloss`` console script runs,
    from the wheel's copy of the package, and writes a surrogate that loads."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, command = str(venv / "bin" / "python"), str(venv / "bin" / "reloss")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}

    def run(*args):
        result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(built_wheel))
    # torch and the rest from this environment, not installed again: the lines of a .pth file
    # are appended to sys.path, and the .pth files in those folders (this environment's editable
    # reloss among them) are not processed. Written after the install, so that pip sees only the
    # new environment.
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
    with open(os.path.join(site, "host.pth"), "w", encoding="utf-8") as f:
        f.write(sysconfig.get_path("purelib") + "\n")
    found = json.loads(run(python, "-c", "import json, sys, reloss; "
                                         "print(json.dumps([reloss.__file__, sys.path]))"))
    assert found[0] == os.path.join(site, "reloss", "__init__.py")  # the wheel's copy
    assert os.path.join(ROOT, "plugins") not in found[1]

    printed = run(command, "--help")
    assert all(f"  {name}" in printed for name in COMMANDS)
    out = tmp_path / "surrogate"
    args = ["--task", "cls", "--out", str(out), "--steps", "5", "--train-chunks", "64"]
    printed = run(command, "pretrain", *args)
    assert f"to {out}/" in printed
    with open(out / "model_card.json", encoding="utf-8") as f:
        card = json.load(f)
    assert card["command"] == "reloss pretrain " + shlex.join(args)
    surrogate = reloss.load_surrogate(str(out / "surrogate.pt"))
    assert surrogate.task == "cls" and surrogate.sha256 == card["sha256"]
