"""Helpers shared by every test folder (``subprocess_progress``) are importable as modules."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
