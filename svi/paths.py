"""Where the repository's Hydra configs live (the entrypoints compose from `conf/` at the repo root)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = str(REPO_ROOT / "conf")
