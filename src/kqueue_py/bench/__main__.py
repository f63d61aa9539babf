"""``python -m kqueue_py.bench``."""
from __future__ import annotations

from .cli import main

raise SystemExit(main())
