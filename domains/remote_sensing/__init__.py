"""Remote sensing: multi-band GeoTIFFs (rasterio) and band stacks such as MODIS (xarray)."""
