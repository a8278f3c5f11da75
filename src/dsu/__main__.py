"""`python -m dsu ...` is `dsu ...`."""
from .cli import main

raise SystemExit(main())
