"""Brain MRI: multi-contrast NIfTI (BraTS) with missing modalities."""
from domains.brain_mri.io import MODALITIES

__all__ = ["MODALITIES"]
