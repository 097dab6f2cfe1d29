"""reloss_nat in fairseq: the criterion against nat_loss in-process, then the real command-line
tools (fairseq-preprocess, fairseq-train, fairseq-generate, torchrun) on a generated corpus."""
import os
import random
import re
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("fairseq")

from fairseq import options, tasks  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402

import reloss  # noqa: E402
import reloss.fairseq  # noqa: E402,F401  (registers reloss_nat)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(ROOT, "plugins", "fairseq_reloss")
BIN = os.path.dirname(sys.executable)
SMALL = ("--encoder-embed-dim 32 --decoder-embed-dim 32 --encoder-ffn-embed-dim 64 "
         "--decoder-ffn-embed-dim 64 --encoder-layers 1 --decoder-layers 1 "
         "--encoder-attention-heads 2 --decoder-attention-heads 2").split()
TRAIN = ["--task", "translation_lev", "--arch", "nonautoregressive_transformer", "--noise",
         "full_mask", "--share-all-embeddings", "--optimizer", "adam", "--lr", "0.001",
         "--max-tokens", "400", "--pred-length-offset", "--length-loss-factor", "0.1",
         "--label-smoothing", "0.1", "--cpu", "--num-workers", "0", "--log-format", "simple",
         "--log-interval", "1", "--disable-validation", "--no-epoch-checkpoints",
         # fairseq prefetches batches on a daemon thread; a run that stops mid-epoch can exit
         # while that thread is inside torch, and the process then aborts (SIGABRT, "terminate
         # called without an active exception") after training and saving. No prefetch thread:
         "--data-buffer-size", "0", *SMALL]
# Without NAT's length flags: fairseq's autoregressive transformer (a model without a word_ins
# output) and the Levenshtein transformer (no length head).
AUTOREGRESSIVE = TRAIN[:TRAIN.index("--pred-length-offset")] + TRAIN[
    TRAIN.index("--length-loss-factor") + 2:]
GENERATE = ["--task", "translation_lev", "--gen-subset", "test", "--iter-decode-max-iter", "0",
            "--iter-decode-with-beam", "1", "--beam", "1", "--batch-size", "16",
            "--required-batch-size-multiple", "1", "--cpu"]


def run(command, env=None, check=True):
    """A command-line tool of this environment; returns its stdout and stderr together."""
    if command[0].startswith("fairseq-"):
        command = [os.path.join(BIN, command[0])] + command[1:]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable,
               PATH=BIN + os.pathsep + os.environ["PATH"], **(env or {}))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    output = done.stdout + done.stderr
    if check and done.returncode != 0:
        raise AssertionError(f"{command[0]} exited {done.returncode}:\n{output[-4000:]}")
    return output if check else (done.returncode, output)


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory):
    """A generated word-for-phrase language pair with reordering, binarised by fairseq."""
    folder = tmp_path_factory.mktemp("fairseq_data")
    rng = random.Random(0)
    phrases = {w: [f"t{w}"] * (1 + w % 2) for w in range(24)}
    for split, count in (("train", 240), ("valid", 24), ("test", 24)):
        with open(folder / f"{split}.src", "w") as src, open(folder / f"{split}.tgt", "w") as tgt:
            for _ in range(count):
                words = [rng.randrange(24) for _ in range(rng.randint(2, 9))]
                target = [t for w in reversed(words[:2]) for t in phrases[w]]
                target += [t for w in words[2:] for t in phrases[w]]
                src.write(" ".join(f"s{w}" for w in words) + "\n")
                tgt.write(" ".join(target) + "\n")
    run(["fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref",
         str(folder / "train"), "--validpref", str(folder / "valid"), "--testpref",
         str(folder / "test"), "--destdir", str(folder / "bin"), "--joined-dictionary",
         "--workers", "1"])
    return str(folder / "bin")


def build(data_bin, *extra, base=TRAIN):
    """Task, model and criterion as fairseq-train builds them, from command-line arguments."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data_bin, *base, *extra])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    return task, model, task.build_criterion(cfg.criterion)


def batch(task, count=8):
    task.load_dataset("train")
    dataset = task.dataset("train")
    sample = dataset.collater([dataset[i] for i in range(count)])
    sample["prev_target"] = task.inject_noise(sample["target"])
    return sample


def test_reloss_weight_scales_the_surrogate_and_nat_loss_cross_entropy(data_bin):
    """word_ins = w (S + c CE) with w = --reloss-weight, c = --reloss-ce-weight and CE nat_loss's
    own term: the CE part's value and gradient are nat_loss's (length terms switched off)."""
    no_length = ("--length-loss-factor", "0")
    task, model, mixed = build(data_bin, "--criterion", "reloss_nat", "--reloss-weight", "2",
                               "--reloss-ce-weight", "0.5", *no_length)
    _, _, doubled = build(data_bin, "--criterion", "reloss_nat", "--reloss-weight", "2",
                          *no_length)
    _, _, single = build(data_bin, "--criterion", "reloss_nat", *no_length)
    _, _, nat_loss = build(data_bin, "--criterion", "nat_loss", *no_length)
    model.eval()  # no dropout: every criterion sees the same outputs
    sample = batch(task)
    parameters = list(model.parameters())

    def evaluated(criterion):
        loss, size, logged = criterion(model, sample)
        assert size == 1
        return loss, logged, torch.autograd.grad(loss, parameters, allow_unused=True)

    loss, logged, grads = evaluated(mixed)
    loss_doubled, logged_doubled, grads_doubled = evaluated(doubled)
    _, logged_single, _ = evaluated(single)
    their_loss, their_logged, their_grads = evaluated(nat_loss)
    assert logged_doubled["word_ins-loss"] == pytest.approx(2 * logged_single["word_ins-loss"],
                                                            rel=1e-6)
    assert logged["word_ins-loss"] == pytest.approx(
        logged_doubled["word_ins-loss"] + 2 * 0.5 * their_logged["word_ins-loss"], rel=1e-6)
    torch.testing.assert_close(loss - loss_doubled, their_loss)
    torch.testing.assert_close(logged["nll_loss"], their_logged["nll_loss"])
    assert logged["reloss-loss"] == logged_single["reloss-loss"]
    for ours, alone, theirs in zip(grads, grads_doubled, their_grads, strict=True):
        if theirs is not None:
            torch.testing.assert_close(ours - alone, theirs, rtol=1e-4, atol=1e-6)


def test_default_is_the_surrogate_plus_nat_loss_length_term(data_bin):
    task, model, criterion = build(data_bin, "--criterion", "reloss_nat")
    _, _, nat_loss = build(data_bin, "--criterion", "nat_loss")
    model.eval()
    sample = batch(task)
    loss, _, logged = criterion(model, sample)
    _, _, their_logged = nat_loss(model, sample)
    outputs = model(sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"],
                    sample["prev_target"], sample["target"])
    entry = outputs["word_ins"]
    surrogate = reloss.load_surrogate("nat")(entry["out"], entry["tgt"],
                                             entry["mask"].float()).item()
    # Label smoothing (--label-smoothing 0.1) as nat_loss applies it, the surrogate in place of
    # the NLL: 0.9 surrogate + 0.1 mean over the vocabulary of -log p.
    spread = (-entry["out"][entry["mask"]].float().log_softmax(-1).mean(-1).mean()).item()
    assert logged["reloss-loss"] == pytest.approx(surrogate, rel=1e-5)
    assert logged["word_ins-loss"] == pytest.approx(0.9 * surrogate + 0.1 * spread, rel=1e-5)
    # The length term is nat_loss's, and the logged NLL is the plain token NLL.
    assert logged["length-loss"] == pytest.approx(their_logged["length-loss"], rel=1e-6)
    torch.testing.assert_close(logged["nll_loss"], their_logged["nll_loss"])
    assert loss.item() == pytest.approx(logged["word_ins-loss"] + 0.1 * logged["length-loss"],
                                        rel=1e-5)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_surrogate_is_frozen_and_outside_the_criterion(data_bin):
    task, model, criterion = build(data_bin, "--criterion", "reloss_nat")
    assert list(criterion.parameters()) == [] and criterion.state_dict() == {}
    loss, _, _ = criterion(model, batch(task))
    loss.backward()
    surrogate = criterion.word_insertion.surrogate
    assert all(not p.requires_grad and p.grad is None for p in surrogate.parameters())


def test_works_for_cmlm_levenshtein_and_under_autocast(data_bin):
    task, model, criterion = build(data_bin, "--criterion", "reloss_nat", "--arch",
                                   "cmlm_transformer", "--noise", "random_mask")
    loss, _, logged = criterion(model, batch(task))
    assert torch.isfinite(loss) and logged["reloss-loss"] > 0
    # Levenshtein: word insertion from the surrogate, deletion and insertion counts as nat_loss.
    task, model, criterion = build(data_bin, "--criterion", "reloss_nat", "--arch",
                                   "levenshtein_transformer", "--noise", "random_delete",
                                   base=AUTOREGRESSIVE)
    loss, _, logged = criterion(model, batch(task))
    assert torch.isfinite(loss) and {"mask_ins-loss", "word_del-loss"} <= set(logged)
    task, model, criterion = build(data_bin, "--criterion", "reloss_nat")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, logged = criterion(model, batch(task))
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    # Half-precision logits (fairseq --fp16 on a GPU) are read in float32.
    logits = torch.randn(2, 5, 40).half()
    value = reloss.load_surrogate("nat")(logits, torch.randint(4, 40, (2, 5)))
    assert value.dtype == torch.float32 and torch.isfinite(value)


def test_targets_longer_than_the_model_allows_are_handled():
    surrogate = reloss.load_surrogate("nat")
    logits = torch.randn(2, 1500, 64, requires_grad=True)
    target = torch.randint(4, 64, (2, 1500))
    value = surrogate(logits, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_bad_input_is_refused_with_the_argument_named(data_bin):
    with pytest.raises(ValueError, match="--reloss-checkpoint 'nope'.*neither a shipped"):
        build(data_bin, "--criterion", "reloss_nat", "--reloss-checkpoint", "nope")
    with pytest.raises(ValueError, match="--reloss-checkpoint 'cls'.*translation \\('nat'\\)"):
        build(data_bin, "--criterion", "reloss_nat", "--reloss-checkpoint", "cls")
    with pytest.raises(ValueError, match="'--reloss-weight' should be a finite number >= 0"):
        build(data_bin, "--criterion", "reloss_nat", "--reloss-weight", "-1")
    with pytest.raises(ValueError, match="'--reloss-weight' is 0: there would be no word-ins"):
        build(data_bin, "--criterion", "reloss_nat", "--reloss-weight", "0",
              "--reloss-ce-weight", "1")
    task, model, criterion = build(data_bin, "--criterion", "reloss_nat")
    sample = batch(task)
    vocabulary = len(task.target_dictionary)
    sample["target"][0, 0] = vocabulary + 5
    with pytest.raises(ValueError, match=f"target ids should be in \\[0, {vocabulary}\\)"):
        criterion(model, sample)
    with pytest.raises(ValueError, match=f"'target' should hold token ids in \\[0, {vocabulary}"):
        reloss.load_surrogate("nat")(torch.randn(1, 3, vocabulary),
                                     torch.tensor([[4, 5, vocabulary]]))
    task, model, criterion = build(data_bin, "--criterion", "reloss_nat", "--arch", "transformer",
                                   base=AUTOREGRESSIVE)
    with pytest.raises(ValueError, match="needs a model whose training output has a 'word_ins' "
                                         "entry.*TransformerModel does not take tgt_tokens"):
        criterion(model, batch(task))
    # A model that takes NAT's arguments but has no word_ins output is refused after its forward.
    task, model, criterion = build(data_bin, "--criterion", "reloss_nat")
    forward = model.forward
    model.forward = lambda *args, tgt_tokens=None: {"length": forward(*args)["length"]}
    with pytest.raises(ValueError, match="NATransformerModel returned a dict with \\['length'\\]"):
        criterion(model, batch(task))


def trained(data_bin, save_dir, *extra):
    output = run(["fairseq-train", data_bin, *TRAIN, "--save-dir", str(save_dir), "--criterion",
                  "reloss_nat", "--user-dir", USER_DIR, *extra])
    records = re.findall(r"\| train \| epoch \d+ \| loss ([\d.]+) \| nll_loss ([\d.]+) \| "
                         r"reloss ([\d.]+) \| word_ins ([\d.]+) \| length ([\d.]+) .*"
                         r"num_updates (\d+)", output)
    assert records, output[-3000:]
    return output, [tuple(float(v) for v in record) for record in records]


@pytest.mark.slow
def test_train_generate_resume_and_switch_back_to_nat_loss(data_bin, tmp_path):
    save = tmp_path / "reloss"
    output, records = trained(data_bin, save, "--max-update", "4")
    assert records[-1][-1] == 4
    assert all(v == v and v < 1e3 for record in records for v in record)  # finite
    checkpoint = save / "checkpoint_last.pt"
    assert checkpoint.exists()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["criterion"] is None  # the criterion holds nothing
    assert not [k for k in state["model"] if "surrogate" in k or "reloss" in k]
    assert state["cfg"]["criterion"]["_name"] == "reloss_nat"
    at_4 = shutil.copy(checkpoint, tmp_path / "checkpoint_4.pt")  # inside epoch 1 (9 batches)

    generated = run(["fairseq-generate", data_bin, "--path", str(checkpoint), *GENERATE,
                     "--user-dir", USER_DIR])
    assert re.search(r"BLEU4 = [\d.]+", generated), generated[-2000:]
    assert "Translated 24 sentences" in generated

    output, records = trained(data_bin, save, "--max-update", "8")
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 4 updates\)", output)
    assert records[-1][-1] == 8

    # Loaded with nat_loss: the criterion changes, so fairseq asks for a fresh optimizer. The run
    # resumes inside the restored epoch (batch 4 of 9) and stops inside it; with fairseq's
    # prefetch thread (the default --data-buffer-size 10) this aborted at exit every time.
    switched = run(["fairseq-train", data_bin, *TRAIN, "--save-dir", str(tmp_path / "nat"),
                    "--criterion", "nat_loss", "--user-dir", USER_DIR, "--restore-file",
                    str(at_4), "--reset-optimizer", "--reset-meters", "--max-update", "6"])
    assert "Loaded checkpoint" in switched and "num_updates 6" in switched


@pytest.mark.slow
def test_two_worker_cpu_distributed_run(data_bin, tmp_path):
    output = run(["bash", os.path.join(ROOT, "tools", "fairseq_dist_train.sh"), "2", data_bin,
                  *TRAIN, "--save-dir", str(tmp_path), "--criterion", "reloss_nat", "--user-dir",
                  USER_DIR, "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
                  "--max-update", "3"], env=dict(PORT=str(29600 + os.getpid() % 300)))
    assert "distributed init (rank 0)" in output and "distributed init (rank 1)" in output
    assert re.search(r"training on 2 devices", output)
    assert re.search(r"\| train \| .*\| reloss [\d.]+ .*num_updates 3", output)
    assert (tmp_path / "checkpoint_last.pt").exists()


@pytest.mark.slow
def test_errors_come_before_training_with_the_cli(data_bin, tmp_path):
    code, output = run(["fairseq-train", data_bin, *AUTOREGRESSIVE, "--save-dir", str(tmp_path),
                        "--criterion", "reloss_nat", "--user-dir", USER_DIR, "--arch",
                        "transformer", "--max-update", "2"], check=False)
    assert code != 0 and "needs a model whose training output has a 'word_ins'" in output
    assert "num_updates" not in output and not (tmp_path / "checkpoint_last.pt").exists()
    code, output = run(["fairseq-train", data_bin, *TRAIN, "--save-dir", str(tmp_path),
                        "--criterion", "reloss_nat", "--user-dir", USER_DIR,
                        "--reloss-checkpoint", str(tmp_path / "missing.pt")], check=False)
    assert code != 0 and "--reloss-checkpoint" in output and "missing.pt" in output


@pytest.mark.slow
def test_official_nat_base_command_runs_with_only_the_criterion_changed(data_bin, tmp_path):
    """projects/wmt16_enro_nat/train.sh: fairseq's NAT recipe, the model shrunk."""
    project = os.path.join(ROOT, "projects", "wmt16_enro_nat")
    output = run(["bash", os.path.join(project, "train.sh"), data_bin, str(tmp_path),
                  "reloss_nat", "src", "tgt", "--cpu", "--num-workers", "0", "--max-tokens",
                  "400", "--max-update", "3", "--warmup-updates", "2", "--data-buffer-size", "0",
                  *SMALL])
    assert re.search(r"\| train \| .*\| reloss [\d.]+ .*num_updates 3", output)
    evaluated = run(["bash", os.path.join(project, "evaluate.sh"), data_bin,
                     str(tmp_path / "checkpoint_last.pt"), "src", "tgt", "--cpu"])
    assert re.search(r"BLEU4 = [\d.]+", evaluated)


@pytest.mark.slow
def test_nat_proxy_runs_end_to_end(tmp_path, capsys):
    """tools/benchmarks/nat_proxy.py, a few updates: corpus, fairseq-preprocess, two fairseq-train
    runs at once, fairseq-generate with predicted lengths over the whole test set, the table."""
    from tools.benchmarks import nat_proxy

    out = tmp_path / "proxy"
    runs = nat_proxy.main(["--out", str(out), "--seeds", "1", "--updates", "4"])
    assert set(runs) == {"nat_loss", "reloss_nat"}
    for (run,) in runs.values():
        assert 0 <= run["bleu"] <= 100 and run["log"][-1]["num_updates"] == 4
    assert "| reloss_nat |" in capsys.readouterr().out
    assert (out / "results.md").exists() and (out / "curves.png").exists()
    with pytest.raises(SystemExit):
        nat_proxy.main(["--out", str(out)])
    assert f"--out {out} already holds results.md" in capsys.readouterr().err


def test_nat_proxy_table_pairs_the_learned_weights_with_each_anchor():
    """The proxy's table: each criterion against the first, seed by seed, and reloss_nat against
    every fixed-weight anchor it learns its weights against."""
    from tools.benchmarks import nat_proxy

    def runs_of(bleus):
        return [dict(seed=seed, bleu=b, length_match=0.5,
                     log=[dict(num_updates=10, length=1.0, nll_loss=2.0)])
                for seed, b in enumerate(bleus)]

    runs = {"nat_loss": runs_of([4.0, 5.0, 3.0]), "reloss_nat": runs_of([5.0, 5.5, 3.5]),
            "bon:0.3": runs_of([4.5, 5.5, 3.0])}
    text, paired = nat_proxy.table(runs, updates=10)
    assert paired["reloss_nat"].differences == [1.0, 0.5, 0.5]
    assert paired["reloss_nat - bon:0.3"].differences == [0.5, 0.0, 0.5]
    assert "reloss_nat minus bon:0.3, paired by seed: +0.33 +- 0.17" in text
    _, without = nat_proxy.table({"nat_loss": runs["nat_loss"], "bon:1": runs["bon:0.3"]}, 10)
    assert set(without) == {"bon:1"}
    assert "fairseq-generate's BLEU4" not in text
    # Scored by sacrebleu: fairseq-generate's BLEU4 gets a column of its own, paired too.
    for name, bleus in (("nat_loss", [8.0, 9.0, 7.0]), ("reloss_nat", [8.5, 9.0, 8.0])):
        for run, b in zip(runs[name], bleus, strict=True):
            run["fairseq_bleu4"] = b
    text, _ = nat_proxy.table({k: runs[k] for k in ("nat_loss", "reloss_nat")}, 10, "BLEU")
    assert "fairseq-generate's BLEU4" in text
    assert "| 8.00 |" in text and "| 8.50; +0.50 +- 0.29 (" in text


@pytest.mark.slow
def test_nat_proxy_on_tatoeba_with_the_anchor(tmp_path, capsys):
    """nat_proxy --data tatoeba, a few updates: Tatoeba zh-en from the data cache (fetched if
    empty), a dictionary per language, the fixed-weight bag-of-n-grams anchor as reloss_nat with
    weights fixed at W, sacrebleu on detokenised English over the whole test set."""
    import json

    from tools.benchmarks import experiment, nat_proxy

    out = tmp_path / "proxy"
    runs = nat_proxy.main(["--data", "tatoeba", "--vocab", "300", "--out", str(out), "--seeds",
                           "1", "--updates", "3", "--criteria", "nat_loss", "bon:0.3"])
    assert set(runs) == {"nat_loss", "bon:0.3"}
    for name, (run,) in runs.items():
        assert 0 <= run["bleu"] <= 100 and run["log"][-1]["num_updates"] == 3
        # fairseq-generate's own BLEU4 is kept beside sacrebleu's, read from its log.
        logged = (out / f"{experiment.Run(name, 0).tag}" / "generate.log").read_text()
        assert f"BLEU4 = {run['fairseq_bleu4']:.2f}," in logged
    assert {"dict.zh.txt", "dict.en.txt"} <= set(os.listdir(out / "data-bin"))
    anchor = reloss.load_surrogate(str(out / "anchors" / "bon_0.3.pt"))
    assert type(anchor) is reloss.SequenceSurrogate
    torch.testing.assert_close(anchor.ngram_weights, torch.full((4,), 0.3))
    record = json.loads((out / "results.json").read_text())
    assert record["score"] == "BLEU (sacrebleu, detokenised)" and record["width"] == 128
    assert record["corpus"]["counts"]["test"] == 1000 and record["corpus"]["split"] == "english"
    assert record["corpus"]["counts"]["test targets also in train"] == 0
    printed = capsys.readouterr().out
    assert "| bon:0.3 |" in printed and "fairseq-generate's BLEU4" in printed
    with pytest.raises(SystemExit):
        nat_proxy.main(["--data", "tatoeba", "--criteria", "nat_loss", "bon:x", "--out",
                        str(tmp_path / "other")])
    assert "'bon:W' takes a weight W in (0, 1000)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        nat_proxy.main(["--distill", "--out", str(tmp_path / "other")])
    assert "--distill needs --data tatoeba" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        nat_proxy.main(["--split", "pairs", "--out", str(tmp_path / "other")])
    assert "--split needs --data tatoeba" in capsys.readouterr().err


@pytest.mark.slow
def test_user_dir_from_an_installed_wheel_trains(built_wheel, data_bin, tmp_path):
    """A fresh environment with the wheel installed (and the host toolkits of this one): the path
    that reloss.fairseq_user_dir() gives lies in that environment and fairseq-train accepts it."""
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = str(env_dir / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", site, str(built_wheel)], check=True)
    # The host toolkits come from this environment's site-packages, listed after the new one's;
    # its .pth files (among them the source checkout's) are not read from there.
    host = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p))
    with open(os.path.join(site, "host_toolkits.pth"), "w") as f:
        f.write(host + "\n")
    code = "import reloss; print(reloss.__file__); print(reloss.fairseq_user_dir())"
    located = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True,
                             cwd=tmp_path).stdout.split()
    assert located[0].startswith(site) and located[1] == os.path.join(site, "fairseq_reloss")
    done = subprocess.run([python, "-m", "fairseq_cli.train", data_bin, *TRAIN, "--save-dir",
                           str(tmp_path / "save"), "--criterion", "reloss_nat", "--user-dir",
                           located[1], "--max-update", "2", "--no-save"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    trained = r"\| train \| epoch \d+ \| loss [\d.]+ .* reloss [\d.]+"
    assert re.search(trained, output), output[-3000:]
