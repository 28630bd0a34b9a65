"""``python -m hcral``: the same command line as the ``hcral`` script."""

from hcral.cli import main

raise SystemExit(main())
