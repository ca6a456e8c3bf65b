"""``python -m d2r <command>``: the same as the ``d2r`` console command."""

from d2r.cli.dispatch import main

raise SystemExit(main())
