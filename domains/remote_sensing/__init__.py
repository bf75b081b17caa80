"""Remote sensing: multi-band GeoTIFFs (rasterio) and band stacks such as MODIS (xarray)."""
from scimae.core.errors import require

require("remote sensing", "geo", "rasterio", "xarray")
