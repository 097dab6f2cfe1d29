"""The ``reloss`` command (also ``python -m reloss``): learn, check and ship a surrogate.

One module per command; each has a ``main(argv=None, prog=...)`` and keeps its functions
importable (``pretrain.table``, ``evaluate.evaluate``, ``collect.collect``). A command's module
is imported only when that command runs.
"""
import argparse
import importlib
import sys

# command: (its module in reloss.cli, its line in ``reloss --help``)
COMMANDS = {
    "pretrain": ("pretrain", "learn a surrogate for a task's metric or your own"),
    "evaluate": ("evaluate", "check a surrogate's ranking on stored predictions"),
    "ship": ("ship", "copy a surrogate into this package (maintainers)"),
    "collect-predictions": ("collect", "store a trained mmpretrain model's predictions"),
}


def main(argv=None):
    """Run ``reloss COMMAND ARGS`` on ``argv`` (default: ``sys.argv[1:]``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(f"reloss.cli.{COMMANDS[argv[0]][0]}")
        module.main(argv[1:], prog=f"reloss {argv[0]}")
        return
    width = max(map(len, COMMANDS)) + 2
    parser = argparse.ArgumentParser(
        prog="reloss", usage="reloss [-h] COMMAND [ARGS]",
        description="Learn, check and ship a surrogate loss.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
               + "".join(f"  {name:<{width}}{line}\n" for name, (_, line) in COMMANDS.items())
               + "\nRun 'reloss COMMAND --help' for a command's options.")
    parser.add_argument("command", metavar="COMMAND", choices=COMMANDS,
                        help="one of the commands below")
    parser.parse_args(argv[:1])  # prints the help, or an error naming the missing or unknown one
