#!/usr/bin/env python
"""Train an agent with plasticity interventions. See `python experiments/run.py --help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from plastic.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
