"""The command-line tools, run from the repository root as ``python -m tools.<name>``.

The OpenMMLab entry points (``tools/train.py``, ``tools/test.py``, ``tools/dist_train.sh``,
``tools/slurm_train.sh``) also run by path, as OpenMMLab's own do.
"""
