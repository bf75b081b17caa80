"""3D domain: point clouds (Point-MAE) and NeRF radiance grids (NeRF-MAE)."""
from scimae.core.errors import require

require("3D point clouds and NeRF grids", "3d", "open3d", "scipy")
