"""Brain MRI: multi-contrast NIfTI (BraTS) with missing modalities."""
from scimae.core.errors import require

require("brain MRI", "mri", "monai", "nibabel")

from scimae.domains.brain_mri.io import MODALITIES  # noqa: E402

__all__ = ["MODALITIES"]
