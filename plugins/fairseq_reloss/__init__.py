"""The ``--user-dir`` package for fairseq. It is installed with reloss, beside it::

    fairseq-train ... --user-dir "$(python -c 'import reloss; print(reloss.fairseq_user_dir())')"

(in a source checkout it is also ``plugins/fairseq_reloss``).

Importing it registers ``--criterion reloss_nat`` and lets fairseq's loaders (``fairseq-generate``,
resuming) read checkpoints with ``torch.load(..., weights_only=True)``. Its folder is not called
``fairseq``: fairseq imports a user dir under its folder's name, which must not be taken.
"""
import reloss.fairseq  # noqa: F401
