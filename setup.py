"""Packaging for reloss: the import package lives in plugins/reloss, and fairseq's ``--user-dir``
package beside it in plugins/fairseq_reloss (``reloss.fairseq_user_dir()`` gives its installed
path); nothing else goes in the wheel.

The tested stack is pinned in constraints.txt and installed by `make` (see the README): some host
toolkits need build flags that extras cannot express (mmpose and fairseq-fixed without their
dependencies, xtcocotools and torchsort built from source), so the extras below name what each
adapter imports, for people assembling their own environment.
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
    python_requires=">=3.9",
    package_dir={"": "plugins"},
    packages=find_packages(where="plugins", include=["reloss", "reloss.*", "fairseq_reloss"]),
    include_package_data=True,
    package_data={"reloss": ["checkpoints/*.pt", "checkpoints/*.json"]},
    install_requires=["torch>=2.0", "numpy"],
    extras_require={
        "torchsort": ["torchsort>=0.1.9"],
        "mmpretrain": ["mmengine>=0.10", "mmcv-lite>=2.0", "mmpretrain>=1.2"],
        "mmpose": ["mmengine>=0.10", "mmcv-lite>=2.0", "mmpose>=1.1", "xtcocotools"],
        "fairseq": ["fairseq-fixed>=0.12.3", "sacrebleu>=2.0"],
        "transformers": ["transformers>=4.46", "accelerate>=1.0", "tokenizers"],
        "dev": ["pytest", "hypothesis", "ruff", "scipy", "matplotlib", "diffsort", "scikit-learn",
                "tqdm"],
    },
)
