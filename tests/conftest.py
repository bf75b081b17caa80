import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(2)


def shared_data(sub: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real sample data not present at {path} (the shared data folder is absent)")
    return path


def collate(samples):
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
