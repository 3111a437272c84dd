"""`python -m pgolf` runs the command line."""

from pgolf.cli import main

raise SystemExit(main())
