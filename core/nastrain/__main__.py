"""``python -m nastrain`` runs the command line."""

from nastrain.cli import main

raise SystemExit(main())
