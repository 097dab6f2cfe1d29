"""Fine-tune a transformers extractive QA model on SQuAD-format JSON, with its own loss or ReLoss.

    python -m tools.finetune_qa --model hfl/chinese-macbert-base --train cmrc2018_train.json \
        --dev cmrc2018_dev.json --loss reloss --out work_dirs/mrc/reloss_seed0
    python -m tools.finetune_qa --model DIR ... --loss default      # the models' own loss

The model and tokenizer come from ``--model`` (a local folder or a hub name, which needs the
hub); the tokenizer must be a fast one. Training is transformers' ``Trainer`` (``--loss default``:
the model's loss, (CE(start) + CE(end)) / 2) or ``reloss.transformers.ReLossQATrainer``
(``--loss reloss``). After every epoch the dev answers are decoded (n-best starts and ends, at most
--max-answer-length tokens, inside the passage) and scored: CMRC 2018 EM and F1, DuReader ROUGE-L
and BLEU-4 (character-level; see reloss.mrc_metrics). Writes to --out: predictions.json (the last
epoch's answers), metrics.json (every epoch's scores, the arguments), model/ (the fine-tuned model
and tokenizer), trainer/ (the Trainer's checkpoints, one per epoch with --save-checkpoints) and,
with --save-logits, dev_logits.pt.
Runs on CPUs too; launch with torchrun for several processes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

OUTPUTS = ("predictions.json", "metrics.json", "model", "trainer", "dev_logits.pt")
LOSSES = ("default", "reloss")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m tools.finetune_qa",
                                     description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a local model folder or a hub name")
    parser.add_argument("--train", required=True, help="SQuAD-format training JSON")
    parser.add_argument("--dev", required=True, help="SQuAD-format dev JSON (with answers)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--force", action="store_true", help="replace outputs already in --out")
    parser.add_argument("--loss", choices=LOSSES, default="reloss",
                        help="'default': the model's own loss with transformers' Trainer; "
                             "'reloss': ReLossQATrainer (default)")
    parser.add_argument("--checkpoint", default="qa", help="ReLoss surrogate (--loss reloss): a "
                                                           "shipped name or a path (default qa)")
    parser.add_argument("--ce-weight", type=float, help="weight of the default loss added to "
                                                        "the surrogate (default: the task's)")
    parser.add_argument("--loss-weight", type=float, default=1.0,
                        help="ReLossQA's loss_weight: multiplies the whole loss (default 1)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--warmup", type=float, default=0.1, help="warm-up, a share of steps")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--max-answer-length", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-checkpoints", action="store_true",
                        help="keep a Trainer checkpoint after every epoch (trainer/)")
    parser.add_argument("--resume", action="store_true",
                        help="resume from the last checkpoint in --out/trainer")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    parser.add_argument("--save-logits", action="store_true",
                        help="also write dev_logits.pt: every epoch's dev start/end logits with "
                             "the gold positions, as stored 'qa' predictions (group = epoch) for "
                             "reloss evaluate")
    return parser


def check_args(parser, args):
    for name in ("batch_size", "grad_accum", "max_length", "max_answer_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} should be >= 1 but got "
                         f"{getattr(args, name)}")
    if not 0 <= args.stride < args.max_length:
        parser.error(f"--stride should be in [0, --max-length) but got {args.stride}")
    if args.epochs <= 0:
        parser.error(f"--epochs should be > 0 but got {args.epochs}")
    for name in ("train", "dev"):
        if not os.path.isfile(getattr(args, name)):
            parser.error(f"--{name} {getattr(args, name)!r}: no such file")
    present = [n for n in OUTPUTS if os.path.exists(os.path.join(args.out, n))]
    if present and not (args.force or args.resume):
        parser.error(f"--out {args.out} already holds {', '.join(present)}; pass --force to "
                     f"replace them (or --resume to continue)")
    if args.force and not args.resume:
        for name in present:
            path = os.path.join(args.out, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


class _Rows:
    """A dataset of feature dicts, as ``default_data_collator`` takes them."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


def finetune(args, progress=None):
    """Train and evaluate as the command line says; returns the metrics record. ``progress``,
    if given, is a tqdm-like bar driven per optimizer step."""
    import torch
    import transformers
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoTokenizer,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    from reloss import squad
    from reloss.mrc_metrics import answer_scores
    from reloss.transformers import ReLossQA, ReLossQATrainer

    started = time.time()
    if progress is not None:
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    transformers.set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForQuestionAnswering.from_pretrained(args.model)
    train_examples, dev_examples = squad.read_squad(args.train), squad.read_squad(args.dev)
    train = _Rows(squad.train_features(train_examples, tokenizer, args.max_length, args.stride))
    dev_rows, owners, offsets = squad.eval_features(dev_examples, tokenizer, args.max_length,
                                                    args.stride)
    dev = _Rows(dev_rows)
    references = [e["answers"] for e in dev_examples]
    stored = dict(task="qa", logits=[], group=[])
    if args.save_logits:  # the same windows, labelled as for training
        labelled = squad.train_features(dev_examples, tokenizer, args.max_length, args.stride)
        stored["positions"] = torch.tensor([[f["start_positions"], f["end_positions"]]
                                            for f in labelled])
        stored["context"] = torch.tensor([[o is not None for o in w] for w in offsets]).float()
    training_args = TrainingArguments(
        output_dir=os.path.join(args.out, "trainer"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
        num_train_epochs=args.epochs, learning_rate=args.lr, warmup_steps=args.warmup,
        weight_decay=args.weight_decay, seed=args.seed, data_seed=args.seed,
        save_strategy="epoch" if args.save_checkpoints else "no", logging_steps=10,
        report_to="none", disable_tqdm=progress is not None, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(), bf16=args.bf16)
    curve = []

    class Evaluate(TrainerCallback):
        def on_step_end(self, train_args, state, control, **kwargs):
            if progress is not None:
                progress.total = state.max_steps
                progress.update(1)

        def on_epoch_end(self, train_args, state, control, **kwargs):
            output = trainer.predict(dev)
            start_logits, end_logits = output.predictions[:2]
            if args.save_logits:
                stored["logits"].append(torch.stack([torch.as_tensor(start_logits),
                                                     torch.as_tensor(end_logits)], 1).float())
                stored["group"].append(torch.full((len(dev),), len(curve)))
            answers = squad.predict_answers(dev_examples, owners, offsets,
                                            torch.as_tensor(start_logits),
                                            torch.as_tensor(end_logits),
                                            args.max_answer_length)
            scores = answer_scores([answers[e["id"]] for e in dev_examples], references)
            curve.append(dict(epoch=round(state.epoch, 3), step=state.global_step,
                              train_loss=_last_loss(state.log_history), **scores))
            evaluate.answers = answers
            if progress is not None:
                progress.set_postfix(F1=f"{scores['F1']:.1f}")

    evaluate = Evaluate()
    common = dict(model=model, args=training_args, train_dataset=train,
                  data_collator=default_data_collator, callbacks=[evaluate])
    if args.loss == "reloss":
        trainer = ReLossQATrainer(**common, reloss=ReLossQA(args.checkpoint, args.ce_weight,
                                                             args.loss_weight))
    else:
        trainer = Trainer(**common)
    if progress is not None:  # the bar replaces the Trainer's printed logs
        trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    record = dict(loss=args.loss, curve=curve, final=curve[-1] if curve else None,
                  arguments=vars(args), seconds=round(time.time() - started, 1),
                  versions=dict(transformers=transformers.__version__,
                                torch=torch.__version__))
    if trainer.is_world_process_zero():
        trainer.save_model(os.path.join(args.out, "model"))
        tokenizer.save_pretrained(os.path.join(args.out, "model"))
        with open(os.path.join(args.out, "predictions.json"), "w", encoding="utf-8") as f:
            json.dump(getattr(evaluate, "answers", {}), f, ensure_ascii=False, indent=1)
        if args.save_logits and stored["logits"]:
            torch.save(dict(stored, logits=torch.cat(stored["logits"]),
                            positions=stored["positions"].repeat(len(stored["logits"]), 1),
                            context=stored["context"].repeat(len(stored["logits"]), 1),
                            group=torch.cat(stored["group"])),
                       os.path.join(args.out, "dev_logits.pt"))
        with open(os.path.join(args.out, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
    return record


def _last_loss(history):
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return losses[-1] if losses else None


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    os.makedirs(args.out, exist_ok=True)
    record = finetune(args)
    if record["final"] is not None:
        final = record["final"]
        print(f"[reloss] {args.loss} loss, epoch {final['epoch']:g}: EM {final['EM']:.2f}, F1 "
              f"{final['F1']:.2f}, ROUGE-L {final['ROUGE-L']:.2f}, BLEU-4 {final['BLEU-4']:.2f} "
              f"({record['seconds']:.0f} s); wrote {args.out}/", file=sys.stdout, flush=True)
    return record


if __name__ == "__main__":
    main()
