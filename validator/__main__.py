"""``python -m validator PATH [--strict] [--json] [--sota X]``."""

from validator.cli import main

raise SystemExit(main())
