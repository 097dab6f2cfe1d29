"""``python -m reloss COMMAND ARGS``, the same as ``reloss COMMAND ARGS``."""
from reloss.cli import main

main()
