"""``reloss pretrain`` by its older path: ``python tools/pretrain_surrogate.py ARGS`` and
``python -m tools.pretrain_surrogate ARGS`` run ``reloss pretrain ARGS``
(reloss/cli/pretrain.py)."""
from reloss.cli.pretrain import main

if __name__ == "__main__":
    main(prog="python -m tools.pretrain_surrogate" if __spec__ else
         "python tools/pretrain_surrogate.py")
