"""scimae core: the domain-agnostic masked-autoencoder machinery.

Importing ``core`` pulls in torch only; domain libraries (monai, rasterio, wfdb, open3d,
pytorch3d) are imported by the domain packages that need them.
"""
from core.errors import DataError
from core.tokens import MaskPlan, TokenSet

__all__ = ["DataError", "MaskPlan", "TokenSet"]
__version__ = "0.1.0"
