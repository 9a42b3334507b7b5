"""``python -m hftalloc.ipc status|cleanup|recover`` (see :mod:`hftalloc.ipc.cli`)."""

from hftalloc.ipc.cli import main

raise SystemExit(main())
