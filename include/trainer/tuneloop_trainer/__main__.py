"""``python -m tuneloop_trainer``: see :mod:`tuneloop_trainer.cli`."""

import sys

from tuneloop_trainer.cli import main

sys.exit(main())
