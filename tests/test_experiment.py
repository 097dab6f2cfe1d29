"""tools/benchmarks/experiment.py, the harness of the demo, the proxies and the training benchmark:
the overwrite rule, paired statistics, provenance, the table, the runner and quiet runs; and the
tools' command lines."""
import datetime
import hashlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import warnings

import pytest

from reloss import checkpoint
from tools.benchmarks import demo_digits, experiment, nat_proxy, pose_proxy
from tools.benchmarks import training as benchmark_training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(argv, seeds=3):
    parser = experiment.parser("A tool.\n\nWhat it does.\n", "tool", seeds=seeds)
    return parser, parser.parse_args(argv)


# The overwrite rule.

def test_an_out_holding_an_output_is_refused_and_left_alone(tmp_path, capsys):
    (tmp_path / "results.md").write_text("mine")
    (tmp_path / "notes.txt").write_text("also mine")
    parser, args = parse(["--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        experiment.check_args(parser, args, ["results.json", "results.md", "run_seed0"])
    assert exit_info.value.code == 2
    assert (f"--out {tmp_path} already holds results.md; pass --force to replace them"
            in capsys.readouterr().err)
    assert (tmp_path / "results.md").read_text() == "mine"


def test_the_error_counts_the_other_outputs_present(tmp_path, capsys):
    (tmp_path / "results.md").write_text("")
    (tmp_path / "run_seed0").mkdir()
    parser, args = parse(["--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        experiment.check_args(parser, args, ["results.md", "run_seed0"])
    assert "already holds results.md (and 1 more of this run's outputs)" in capsys.readouterr().err


def test_force_removes_exactly_the_outputs_of_the_run(tmp_path):
    (tmp_path / "results.md").write_text("old")
    (tmp_path / "run_seed0").mkdir()
    (tmp_path / "run_seed0" / "epoch_1.pth").write_text("old")
    (tmp_path / "notes.txt").write_text("mine")
    parser, args = parse(["--out", str(tmp_path), "--force"])
    experiment.check_args(parser, args, ["results.md", "results.json", "run_seed0"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_an_out_without_outputs_of_the_run_is_accepted(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    parser, args = parse(["--out", str(tmp_path / "new")])
    experiment.check_args(parser, args, experiment.RESULTS)
    parser, args = parse(["--out", str(tmp_path)])
    experiment.check_args(parser, args, experiment.RESULTS)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds should be a positive number of seeds but got 0"),
    (["--first-seed", "-1"], "--first-seed should be >= 0 but got -1"),
])
def test_seed_options_are_checked(argv, message, tmp_path, capsys):
    parser, args = parse(argv + ["--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        experiment.check_args(parser, args, experiment.RESULTS)
    assert message in capsys.readouterr().err


def test_seeds_start_at_first_seed():
    _, args = parse(["--seeds", "3", "--first-seed", "4"])
    assert list(experiment.seeds(args)) == [4, 5, 6]
    _, args = parse([], seeds=2)
    assert list(experiment.seeds(args)) == [0, 1]


# Paired statistics.

def test_paired_difference_matches_a_hand_computation():
    baseline = {0: 1.0, 1: 2.0, 2: 3.0}
    arm = {2: 3.8, 0: 1.5, 1: 2.1, 7: 9.9}  # seed 7 has no baseline run: left out
    result = experiment.paired(baseline, arm)
    # Differences 0.5, 0.1, 0.8: mean 1.4 / 3; deviations 1/30, -11/30, 10/30, so the sample
    # variance is (1 + 121 + 100) / 900 / 2 = 0.12333..., and SE = sqrt(0.12333... / 3).
    assert result.seeds == [0, 1, 2]
    assert result.differences == pytest.approx([0.5, 0.1, 0.8])
    assert result.mean == pytest.approx(1.4 / 3)
    assert result.se == pytest.approx(math.sqrt(222 / 900 / 2 / 3))
    assert result.verdict == "higher"
    assert result.format() == "+0.47 +- 0.20 (higher)"


def test_paired_difference_pairs_by_seed_not_by_order():
    result = experiment.paired({0: 1.0, 1: 5.0}, {1: 5.0, 0: 2.0})
    assert result.differences == [1.0, 0.0]


@pytest.mark.parametrize("baseline, arm, verdict", [
    ({0: 0.0, 1: 0.0, 2: 0.0}, {0: 1.0, 1: -1.0, 2: 0.5}, "tie"),  # mean 1/6, SE 0.6
    ({0: 2.0, 1: 2.0}, {0: 1.0, 1: 1.5}, "lower"),  # mean -0.75, SE 0.25
    ({0: 2.0, 1: 2.0}, {0: 3.0, 1: 1.0}, "tie"),  # mean 0, SE 1
    ({3: 2.0}, {3: 2.5}, "one seed"),
    ({0: 1.0, 1: 1.0}, {0: float("nan"), 1: 1.0}, "n/a"),
])
def test_paired_verdict(baseline, arm, verdict):
    assert experiment.paired(baseline, arm).verdict == verdict


def test_paired_with_one_seed_has_no_standard_error():
    result = experiment.paired({3: 2.0}, {3: 2.5})
    assert math.isnan(result.se) and result.format() == "+0.50 (one seed)"
    assert result.as_dict() == dict(seeds=[3], differences=[0.5], mean=0.5, se=None,
                                    verdict="one seed")


def test_paired_needs_common_seeds():
    with pytest.raises(ValueError, match=r"paired statistics need seeds run by both arms but "
                                         r"got baseline seeds \[0, 1\] and arm seeds \[2\]"):
        experiment.paired({0: 1.0, 1: 1.0}, {2: 1.0})


# Provenance.

def test_provenance_records_command_versions_checkpoints_machine_and_date(tmp_path):
    mine = tmp_path / "surrogate.pt"
    mine.write_bytes(b"weights")
    record = experiment.provenance("demo_digits", ["--seeds", "2", "--out", "a b"],
                                   surrogates=["cls", str(mine)], packages=("mmengine",))
    assert record["command"] == "python -m tools.benchmarks.demo_digits --seeds 2 --out 'a b'"
    assert set(record["versions"]) >= {"python", "torch", "reloss", "mmengine"}
    import torch

    assert torch.__version__.startswith(record["versions"]["torch"])
    assert record["surrogates"] == {"cls": checkpoint.shipped()["cls"]["sha256"],
                                    str(mine): hashlib.sha256(b"weights").hexdigest()}
    assert set(record["machine"]) >= {"platform", "machine", "cpus", "torch_threads", "gpu"}
    date = datetime.datetime.fromisoformat(record["date"])
    assert date.tzinfo is not None
    assert abs((datetime.datetime.now(date.tzinfo) - date).total_seconds()) < 600
    json.dumps(record)  # serialisable as it is


# Tables, results and plots.

def test_markdown_table():
    text = experiment.markdown_table(["loss", "accuracy"], [["MSE", 1.5], ["ReLoss", "2.0"]])
    assert text == ("| loss | accuracy |\n|---|---|\n| MSE | 1.5 |\n| ReLoss | 2.0 |\n")
    with pytest.raises(ValueError, match="a row should have 2 cells, as the header, but got 1"):
        experiment.markdown_table(["loss", "accuracy"], [["MSE"]])


def test_mean_std():
    assert experiment.mean_std([1.0, 2.0, 3.0]) == "2.00 +- 1.00"
    assert experiment.mean_std([0.25], 3) == "0.250 +- 0.000"


def test_results_and_plot_are_written(tmp_path):
    experiment.write_results(str(tmp_path / "out"), "| a |\n", dict(x=[1, 2]))
    assert (tmp_path / "out" / "results.md").read_text() == "| a |\n"
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == dict(x=[1, 2])
    panel = experiment.Panel("epoch", "accuracy", {"MSE": ([1, 2], [[0.1, 0.5], [0.2, 0.6]])},
                             title="clean")
    experiment.plot_seeds(str(tmp_path / "out" / "curves.png"), [panel, panel], "a test")
    assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# Runs.

def test_run_tags_are_file_names():
    assert experiment.Run("ReLossCls", 2).tag == "relosscls_seed2"
    assert experiment.Run("cross-entropy", 0).tag == "cross_entropy_seed0"
    assert str(experiment.Run("MSE", 1)) == "MSE, seed 1"
    assert experiment.runs(["a", "b"], [3, 4]) == [
        experiment.Run("a", 3), experiment.Run("b", 3), experiment.Run("a", 4),
        experiment.Run("b", 4)]


@pytest.mark.parametrize("jobs", [1, 2])
def test_run_all_returns_results_by_arm_in_seed_order(jobs, capsys):
    def train(run, bar):
        bar.reset(total=3)
        bar.update(3)
        return 10 * run.seed + len(run.arm)

    results = experiment.run_all(experiment.runs(["a", "bb"], [1, 0]), train,
                                 lambda result: f"value {result}", jobs=jobs)
    assert results == {"a": [1, 11], "bb": [2, 12]}  # seed 0 first
    printed = capsys.readouterr()
    assert "[reloss] bb, seed 0: value 2 (" in printed.out
    assert "bb, seed 0" in printed.err  # the progress bar


def test_quiet_sends_output_warnings_and_logging_to_the_file(tmp_path, capsys):
    logger = logging.getLogger("reloss_test_quiet")
    handler = logging.StreamHandler(sys.stdout)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    log = tmp_path / "run" / "console.log"
    try:
        with warnings.catch_warnings(), experiment.quiet(str(log)):
            warnings.simplefilter("always")
            print("printed")
            print("to stderr", file=sys.stderr)
            warnings.warn("a warning", UserWarning, stacklevel=1)
            logger.info("logged")
            inside = logging.StreamHandler(sys.stdout)
            logger.addHandler(inside)
        print("after")
        assert handler.stream is sys.stdout and inside.stream is sys.stdout
    finally:
        logger.handlers.clear()
    text = log.read_text()
    for line in ("printed", "to stderr", "a warning", "logged"):
        assert line in text
    printed = capsys.readouterr()
    assert printed.out == "after\n" and printed.err == ""


# The tools' command lines.

TOOLS = [demo_digits, pose_proxy, nat_proxy, benchmark_training]


@pytest.mark.parametrize("tool", TOOLS, ids=lambda tool: tool.__name__)
def test_usage_in_the_docstring_states_the_defaults(tool):
    parser = tool.build_parser()
    usage = re.findall(r"\[--([a-z-]+) ([^\]]+)\]", tool.__doc__)
    checked = 0
    for option, value in usage:
        if value.isupper() or value.startswith('"'):  # a placeholder: DIR, "..."
            continue
        default = parser.get_default(option.replace("-", "_"))
        shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
        assert shown == value, (option, value, default)
        checked += 1
    assert parser.format_usage().startswith(f"usage: python -m {tool.__name__} ")
    for option in ("--out", "--force", "--seeds", "--first-seed"):
        assert option in parser.format_help()
    if tool is not benchmark_training:
        assert checked >= 2


def test_tools_cite_no_readme_of_the_project():
    """The tools say what they do; only other projects' files may be cited (their path)."""
    folder = os.path.join(ROOT, "tools")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                assert not re.search(r"(?<![/\w])README", f.read()), name


@pytest.mark.slow
def test_entry_points_run_by_path_and_as_modules(tmp_path):
    """tools/train.py and tools/test.py run by path from anywhere, as OpenMMLab's do; the
    experiment tools run as modules from the repository root."""
    env = dict(os.environ, PYTHONPATH="")
    for script in ("train.py", "test.py"):
        done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", script), "--help"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "config" in done.stdout, done.stderr[-2000:]
    done = subprocess.run([sys.executable, "-m", "tools.benchmarks.nat_proxy", "--help"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "--first-seed" in done.stdout, done.stderr[-2000:]


def test_report_writes_the_tables_and_the_record_with_its_time(tmp_path, capsys):
    import time

    paired = {"reloss": {"bleu": experiment.paired({0: 1.0, 1: 2.0}, {0: 1.5, 1: 2.0})}}
    record = dict(paired=experiment.paired_dicts(paired))
    experiment.report(str(tmp_path), "Heading:", "| a |", record, time.time() - 3.0, "runs here")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert 3.0 <= saved["seconds"] < 60 and "seconds" not in record
    assert saved["paired"]["reloss"]["bleu"]["differences"] == [0.5, 0.0]
    assert (tmp_path / "results.md").read_text() == "Heading:\n\n| a |"
    out = capsys.readouterr().out
    assert "Heading:\n| a |" in out and "runs here" in out
