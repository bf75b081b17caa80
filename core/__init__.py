"""scimae core: the domain-agnostic masked-autoencoder machinery.

Importing ``core`` pulls in torch only; domain libraries (monai, rasterio, wfdb, open3d,
pytorch3d) are imported by the domain packages that need them.
"""
from scimae.core.errors import DataError
from scimae.core.tokens import MaskPlan, TokenSet

__all__ = ["DataError", "MaskPlan", "TokenSet"]
