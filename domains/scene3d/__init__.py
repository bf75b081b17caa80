"""3D domain: point clouds (Point-MAE) and NeRF radiance grids (NeRF-MAE)."""
