"""AVO: agentic evolutionary search over GPU attention kernels (arXiv 2603.24517)."""

from pathlib import Path

__version__ = "0.1.0"

# Every default path derives from the project root (seeds/, knowledge/, conf/) or the run directory.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
