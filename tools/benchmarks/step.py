"""Training-step time of a model with ReLoss against the loss it replaces, in one run.

    python -m tools.benchmarks.step [--task cls|pose|nat|qa] [--batch N] [--steps 20]
                                   [--checkpoint cls|cls-balanced|cls-macro-f1|PATH]
                                   [--device cpu|cuda] [--amp bf16|fp16] [--tokens 32]

'cls': the ReLoss paper's CIFAR ResNet-56 (``ResNetCIFARPaper``, 32x32 inputs) as an mmpretrain
``ImageClassifier``, ReLossCls against cross-entropy (batch 128 by default). 'pose':
SimpleBaseline ResNet-50 at 256x192 as an mmpose ``TopdownPoseEstimator`` (64x48 heatmaps),
ReLossPose against ``KeypointMSELoss`` (batch 32 by default). A training step of these is the
forward in 'loss' mode, backward and an SGD step.

'nat': fairseq's NAT-Base, a ``nonautoregressive_transformer`` (fairseq's own architecture
defaults: d 512, 6 encoder and 6 decoder layers, 8 heads, FFN 2048) with a shared 32k-entry
vocabulary and the model flags of fairseq's NAT recipe (examples/nonautoregressive_translation:
--share-all-embeddings, learned positions, --pred-length-offset, --length-loss-factor 0.1,
--apply-bert-init, --dropout 0.3), ``reloss_nat`` (default options) against ``nat_loss``, both
with --label-smoothing 0.1. Task, model and criterion are built through fairseq's own parser,
``TranslationLevenshteinTask``, ``build_model`` and ``build_criterion``. The batch is a
``translation_lev`` one of N sentences (16 by default) of --tokens source and as many target
tokens (<bos> and <eos> included, no padding), the decoder input made by the task's full_mask
noise; a training step is ``criterion(model, sample)`` (the criterion runs the model), backward
and an Adam step (betas 0.9, 0.98, decoupled weight decay 0.01, as fairseq's adam in the recipe).

'qa': BERT-base for extractive QA (transformers' ``BertForQuestionAnswering`` from a ``BertConfig``,
the shape of hfl/chinese-macbert-base: d 768, 12 layers, 12 heads, 21,128-entry vocabulary), 8
sequences of 384 tokens by default; the model's own default loss (given the positions) against
``ReLossQA()`` on its start and end logits, as ``ReLossQATrainer`` computes it; AdamW (lr 3e-5).

Both models are built twice, identical but for the loss and starting from the same weights, and
whole training steps of the two are timed interleaved, so that drifts in machine speed hit both
alike. Prints the median step time of each and the ratio.
"""
import argparse
import statistics
import time

import torch


def classifier(depth, loss, classes):
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    import reloss.mmpretrain  # noqa: F401  (registers ReLossCls and ResNetCIFARPaper)

    init_default_scope("mmpretrain")
    return MODELS.build(dict(
        type="ImageClassifier",
        backbone=dict(type="ResNetCIFARPaper", depth=depth),
        neck=dict(type="GlobalAveragePooling"),
        head=dict(type="LinearClsHead", num_classes=classes, in_channels=64, loss=loss)))


def pose_estimator(loss):
    from mmengine.registry import init_default_scope
    from mmpose.registry import MODELS

    import reloss.mmpose  # noqa: F401  (registers ReLossPose)

    init_default_scope("mmpose")
    codec = dict(type="MSRAHeatmap", input_size=(192, 256), heatmap_size=(48, 64), sigma=2)
    return MODELS.build(dict(
        type="TopdownPoseEstimator",
        backbone=dict(type="ResNet", depth=50),
        head=dict(type="HeatmapHead", in_channels=2048, out_channels=17, loss=loss,
                  decoder=codec)))


NAT_VOCABULARY = 32000
# fairseq's NAT recipe (examples/nonautoregressive_translation/README.md), model and loss flags.
NAT_FLAGS = ["--task", "translation_lev", "--noise", "full_mask",
             "--arch", "nonautoregressive_transformer", "--share-all-embeddings",
             "--encoder-learned-pos", "--decoder-learned-pos", "--pred-length-offset",
             "--length-loss-factor", "0.1", "--apply-bert-init", "--dropout", "0.3",
             "--label-smoothing", "0.1"]


def nat_case(args, device):
    from fairseq import options
    from fairseq.data import Dictionary
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.tasks.translation_lev import TranslationLevenshteinTask

    import reloss.fairseq  # noqa: F401  (registers reloss_nat)

    dictionary = Dictionary()  # shared by source and target, as with --share-all-embeddings
    for i in range(NAT_VOCABULARY - len(dictionary)):
        dictionary.add_symbol(f"w{i}")
    models = {}
    for criterion in ("nat_loss", "reloss_nat"):
        parser = options.get_training_parser(default_task="translation_lev")
        cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(
            parser, ["unused-data-dir", *NAT_FLAGS, "--criterion", criterion]))
        task = TranslationLevenshteinTask(cfg.task, dictionary, dictionary)
        model = task.build_model(cfg.model)
        if models:
            model.load_state_dict(next(iter(models.values()))[0].state_dict())
        models[criterion] = (model, task.build_criterion(cfg.criterion))

    # A translation_lev batch: <bos> w ... w <eos> (the task prepends <bos>), all of one length.
    generator = torch.Generator().manual_seed(0)

    def sentences():
        words = torch.randint(dictionary.nspecial, len(dictionary),
                              (args.batch, args.tokens - 2), generator=generator)
        bos = torch.full((args.batch, 1), dictionary.bos())
        eos = torch.full((args.batch, 1), dictionary.eos())
        return torch.cat((bos, words, eos), 1).to(device)

    source, target = sentences(), sentences()
    sample = dict(id=torch.arange(args.batch, device=device), nsentences=args.batch,
                  ntokens=int(target.ne(dictionary.pad()).sum()), target=target,
                  prev_target=task.inject_noise(target),
                  net_input=dict(src_tokens=source, src_lengths=torch.full(
                      (args.batch,), args.tokens, device=device)))
    shape = cfg.model
    title = (f"fairseq nonautoregressive_transformer (d {shape.encoder_embed_dim}, "
             f"{shape.encoder_layers}+{shape.decoder_layers} layers, "
             f"{shape.encoder_attention_heads} heads, FFN {shape.encoder_ffn_embed_dim}), "
             f"batch {args.batch} of {args.tokens} source / {args.tokens} target tokens, "
             f"{len(dictionary)}-entry shared vocabulary")
    return models, lambda entry: entry[1](entry[0], sample)[0], title


QA_VOCABULARY = 21128  # hfl/chinese-macbert-base's (BERT-base's Chinese vocabulary)
QA_SHAPE = {}  # BertConfig's defaults: BERT-base


def qa_case(args, device):
    """BERT-base for extractive QA (transformers' BertForQuestionAnswering from a BertConfig:
    MacBERT-base's shape), the model's own default loss against ReLossQA on its logits."""
    from transformers import BertConfig, BertForQuestionAnswering

    from reloss.transformers import ReLossQA

    config = BertConfig(vocab_size=QA_VOCABULARY, **QA_SHAPE)
    models = {}
    for name in ("default loss", "ReLossQA"):
        torch.manual_seed(0)  # the same weights for both
        models[name] = (BertForQuestionAnswering(config), ReLossQA() if models else None)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, QA_VOCABULARY, (args.batch, args.tokens),
                              generator=generator).to(device)
    question = args.tokens // 8
    token_type_ids = (torch.arange(args.tokens) > question).long().expand(args.batch, -1)
    token_type_ids = token_type_ids.to(device)
    starts = torch.randint(question + 1, args.tokens - 30, (args.batch,), generator=generator)
    ends = starts + torch.randint(0, 30, (args.batch,), generator=generator)
    starts, ends = starts.to(device), ends.to(device)

    def loss(entry):
        model, reloss = entry
        if reloss is None:
            return model(input_ids=input_ids, token_type_ids=token_type_ids,
                         start_positions=starts, end_positions=ends).loss
        out = model(input_ids=input_ids, token_type_ids=token_type_ids)
        return reloss(out.start_logits, out.end_logits, starts, ends)

    title = (f"transformers BertForQuestionAnswering, BERT-base (d {config.hidden_size}, "
             f"{config.num_hidden_layers} layers, {config.num_attention_heads} heads, "
             f"{QA_VOCABULARY}-entry vocabulary), batch {args.batch} of {args.tokens} tokens")
    return models, loss, title


def mm_case(case, args, device):
    """cls and pose: mmengine models whose 'loss' mode returns a dict of losses."""
    models, images, samples, title = case(args, device)

    def loss(model):
        return sum(value for key, value in model(images, samples, mode="loss").items()
                   if key.startswith("loss"))

    return {name: (model,) for name, model in models.items()}, lambda entry: loss(entry[0]), title


def cls_case(args, device):
    from mmpretrain.structures import DataSample

    import reloss

    ours = dict(type="ReLossCls", checkpoint=args.checkpoint)
    if isinstance(reloss.load_surrogate(args.checkpoint), reloss.ClassAwareSurrogate):
        # A long-tailed training set's counts (imbalance 100), as a config would give them.
        ours["class_counts"] = [100 ** (-c / (args.classes - 1)) for c in range(args.classes)]
    losses = {"cross-entropy": dict(type="CrossEntropyLoss"), "ReLossCls": ours}
    models = {name: classifier(args.depth, loss, args.classes) for name, loss in losses.items()}
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(args.classes, (args.batch,), device=device)
    samples = [DataSample().set_gt_label(label).to(device) for label in labels]
    title = (f"ResNet-{args.depth}, batch {args.batch} of 3x32x32, {args.classes} classes, "
             f"ReLossCls checkpoint '{args.checkpoint}'")
    return models, images, samples, title


def pose_case(args, device):
    from mmengine.structures import InstanceData, PixelData
    from mmpose.structures import PoseDataSample

    from reloss.tasks.pose import gaussian_heatmaps

    losses = {"MSE": dict(type="KeypointMSELoss", use_target_weight=True),
              "ReLossPose": dict(type="ReLossPose", use_target_weight=True)}
    models = {name: pose_estimator(loss) for name, loss in losses.items()}
    images = torch.randn(args.batch, 3, 256, 192, device=device)
    generator = torch.Generator().manual_seed(0)
    centers = torch.rand(args.batch, 17, 2, generator=generator) * torch.tensor([47.0, 63.0])
    targets = gaussian_heatmaps(centers, (64, 48), 2.0).to(device)
    samples = []
    for target in targets:
        sample = PoseDataSample()
        sample.gt_fields = PixelData(heatmaps=target)
        sample.gt_instance_labels = InstanceData(
            keypoint_weights=torch.ones(1, 17, device=device))
        samples.append(sample)
    title = f"SimpleBaseline ResNet-50, batch {args.batch} of 3x256x192, 64x48 heatmaps"
    return models, images, samples, title


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=["cls", "pose", "nat", "qa"], default="cls")
    parser.add_argument("--depth", type=int, default=56, help="cls: ResNet depth")
    parser.add_argument("--batch", type=int,
                        help="default 128 (cls), 32 (pose), 16 sentences (nat), 8 (qa)")
    parser.add_argument("--classes", type=int, default=10, help="cls: number of classes")
    parser.add_argument("--checkpoint", default="cls",
                        help="cls: ReLossCls's surrogate (default 'cls'); a class-aware one "
                             "('cls-balanced', 'cls-macro-f1') is given the class counts of a "
                             "long-tailed training set (imbalance 100)")
    parser.add_argument("--tokens", type=int,
                        help="nat: tokens per source and per target sentence, <bos> and <eos> "
                             "included (default 32); qa: tokens per sequence (default 384)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loss")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["bf16", "fp16"], help="autocast dtype (GPU)")
    args = parser.parse_args(argv)
    args.batch = args.batch or dict(cls=128, pose=32, nat=16, qa=8)[args.task]
    args.tokens = args.tokens or dict(qa=384).get(args.task, 32)
    if args.steps < 1 or args.batch < 1:
        parser.error(f"--steps and --batch should be positive but got {args.steps} and "
                     f"{args.batch}")
    if args.classes < 2:
        parser.error(f"--classes should be at least 2 but got {args.classes}")
    least, what = (64, "a question and a passage") if args.task == "qa" else (
        3, "<bos>, a word, <eos>")
    if args.tokens < least:
        parser.error(f"--tokens should be at least {least} ({what}) but got {args.tokens}")
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.task == "nat":
        built, forward, title = nat_case(args, device)
    elif args.task == "qa":
        built, forward, title = qa_case(args, device)
    else:
        built, forward, title = mm_case(cls_case if args.task == "cls" else pose_case, args,
                                        device)
    models = {}
    for name, (model, *rest) in built.items():
        model = model.to(device).train()
        if args.task == "nat":  # fairseq's NAT recipe: --optimizer adam, decoupled weight decay
            optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98),
                                          weight_decay=0.01)
        elif args.task == "qa":  # transformers' Trainer default: AdamW, weight decay 0
            optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.0)
        else:
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        models[name] = ((model, *rest), optimizer)
    dtype = dict(bf16=torch.bfloat16, fp16=torch.float16).get(args.amp)

    def step(entry, optimizer):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = forward(entry)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {name: [] for name in models}
    for i in range(args.warmup + args.steps):
        for name, (entry, optimizer) in models.items():
            synchronize()
            start = time.perf_counter()
            step(entry, optimizer)
            synchronize()
            if i >= args.warmup:
                times[name].append(1000 * (time.perf_counter() - start))
    medians = {name: statistics.median(values) for name, values in times.items()}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"cpu, {torch.get_num_threads()} threads")
    print(f"{title}, {args.steps} steps each, {where}"
          f"{', autocast ' + args.amp if args.amp else ''}:")
    for name, value in medians.items():
        print(f"  {name:14s} median step {value:9.2f} ms")
    ours, theirs = list(medians)[1], list(medians)[0]
    ratio = medians[ours] / medians[theirs]
    print(f"  ratio {ours} / {theirs}: {ratio:.3f}")
    return dict(medians=medians, ratio=ratio)


if __name__ == "__main__":
    main()
