"""``python -m d2r <command>``: the same as the ``d2r`` console command."""

from d2r.commands import main

raise SystemExit(main())
