"""``python -m hftalloc.fix venue ...`` (the same as ``python -m hftalloc fix venue ...``)."""

from hftalloc.fix.cli import main

raise SystemExit(main())
