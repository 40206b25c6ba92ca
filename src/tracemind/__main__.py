"""``python -m tracemind`` is ``tm``."""

from tracemind.cli.main import main

raise SystemExit(main())
