"""Packaging for reloss: the import package lives in plugins/reloss, and fairseq's ``--user-dir``
package beside it in plugins/fairseq_reloss (``reloss.fairseq_user_dir()`` gives its installed
path); nothing else goes in the wheel. The ``reloss`` command (reloss/cli/) learns, checks and
ships surrogates; ``reloss pretrain`` draws its scatter plot where matplotlib is installed (the
``[pretrain]`` extra).

The tested stack is pinned in constraints.txt and installed by `make` (see the README): some host
toolkits need build flags that extras cannot express (mmpose and fairseq-fixed without their
dependencies, xtcocotools and torchsort built from source), so the extras below name what each
adapter imports, for people assembling their own environment.

The floors are the tested pins (their major.minor): only that stack is tested, and the code uses
what recent releases brought (``zip(strict=True)``, ``torch.serialization.add_safe_globals``,
``numpy._core``, transformers' ``Trainer.loss_is_scaled_for_ga``). tests/test_package.py keeps
them equal to constraints.txt. mmpose stays below 1.2, whose models import mmcv's compiled ops.
"""
from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="reloss",
    version="0.1.0",
    description="Learned metric-surrogate losses (ReLoss, ICLR 2022) for OpenMMLab, fairseq and "
                "transformers",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    package_dir={"": "plugins"},
    packages=find_packages(where="plugins", include=["reloss", "reloss.*", "fairseq_reloss"]),
    include_package_data=True,
    package_data={"reloss": ["checkpoints/*.pt", "checkpoints/*.json"]},
    install_requires=["torch>=2.14", "numpy>=2.4", "tqdm>=4.70"],
    entry_points={"console_scripts": ["reloss = reloss.cli:main"]},
    extras_require={
        "pretrain": ["matplotlib>=3.11"],
        "torchsort": ["torchsort>=0.1.10"],
        "mmpretrain": ["mmengine>=0.10.7", "mmcv-lite>=2.0.1", "mmpretrain>=1.2"],
        "mmpose": ["mmengine>=0.10.7", "mmcv-lite>=2.0.1", "mmpose>=1.1,<1.2",
                   "xtcocotools>=1.14"],
        "fairseq": ["fairseq-fixed>=0.12.3", "sacrebleu>=2.6"],
        "transformers": ["transformers>=5.24", "accelerate>=1.15", "tokenizers>=0.23"],
        "dev": ["pytest>=9.2", "pytest-xdist>=3.8", "hypothesis>=6.170", "ruff>=0.17",
                "scipy>=1.17", "matplotlib>=3.11", "diffsort>=0.2", "scikit-learn>=1.9"],
    },
)
