"""``python -m geocam``: the same as the ``geocam`` command."""

from geocam.cli import main

main()
