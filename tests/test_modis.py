"""MODIS HDF4-EOS gridded granules: StructMetadata grids, sinusoidal georeference, scaling, fill, windows, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scimae.core.errors import DataError
from scimae.domains.remote_sensing import synthetic
from scimae.domains.remote_sensing.data import GeoDataConfig, GeoWindows, scene_paths
from scimae.domains.remote_sensing.hdf4 import SATVISION_TOA_BANDS, HdfScene, SwathScene, parse_grids
from scimae.domains.remote_sensing.transforms import WAVENUMBERS, brightness_temperature
from scimae.domains.remote_sensing.io import Band, open_scene

BANDS = [Band(b) for b in synthetic.MOD09GA_BANDS]


@pytest.fixture(scope="module")
def granule(tmp_path_factory):
    folder = tmp_path_factory.mktemp("modis")
    return synthetic.write_mod09ga(folder / "MOD09GA.A2008296.h08v05.061.2020001000000.hdf", np.random.default_rng(0))


def _raw(path, name):
    from pyhdf.SD import SD

    return SD(str(path)).select(name)[:]


def test_struct_metadata_gives_each_grid_its_size_corners_and_fields(granule):
    from pyhdf.SD import SD

    grids = parse_grids(SD(str(granule)).attributes()["StructMetadata.0"])
    g = grids["MODIS_Grid_500m_2D"]
    assert (g.width, g.height, g.projection, g.radius) == (64, 64, "GCTP_SNSOID", 6371007.181)
    assert g.upper_left == pytest.approx((-11119505.196667, 4447802.078667))  # tile h08v05's corner
    assert g.fields == [f"{b}_1" for b in synthetic.MOD09GA_BANDS]
    assert grids["MODIS_Grid_1km_2D"].fields == ["state_1km_1"]


def test_a_granule_is_a_sinusoidal_scene_with_the_grids_affine(granule):
    scene = open_scene(granule, BANDS)
    assert isinstance(scene, HdfScene) and scene.grid == "MODIS_Grid_500m_2D"
    side = synthetic.SINUSOIDAL_TILE_M
    x0 = synthetic.MODIS_X0 + 8 * side
    y0 = synthetic.MODIS_Y0 - 5 * side
    assert tuple(scene.transform)[:6] == pytest.approx((side / 64, 0, x0, 0, -side / 64, y0))
    assert (scene.height, scene.width) == (64, 64)
    proj = scene.crs.to_dict()
    assert proj["proj"] == "sinu" and proj["R"] == pytest.approx(6371007.181)
    cfg = GeoDataConfig(root=str(granule.parent), bands=BANDS, window=16, patch=8)
    assert scene_paths(cfg) == [granule]
    sample = GeoWindows([granule], cfg, train=False)[0]  # the first window's georeference: its top-left corner
    origin = GeoWindows([granule], cfg, train=False)._origin(scene)
    expected = (side / 64, 0, x0 + origin[1] * side / 64, 0, -side / 64, y0 - origin[0] * side / 64)
    assert tuple(sample["transform"].tolist()) == pytest.approx(expected)
    assert sample["image"].dtype == torch.float32


def test_values_are_scaled_and_fill_and_out_of_range_values_are_invalid(granule):
    scene = HdfScene(granule, [Band("sur_refl_b01"), Band("sur_refl_b07_1")])  # with or without the _1 suffix
    x, ok = scene.read(40, 40, 32)  # past the bottom-right edge: 24 x 24 inside
    raw = _raw(granule, "sur_refl_b01_1")[40:, 40:]
    inside = (raw >= -100) & (raw <= 16000)
    assert not inside.all()  # the generator's out-of-range pixels lie here
    np.testing.assert_array_equal(ok[0, :24, :24], inside)
    np.testing.assert_allclose(x[0, :24, :24][inside], raw[inside] * 1e-4, rtol=1e-6)
    assert not ok[:, 24:].any() and not ok[:, :, 24:].any() and (x[:, 24:] == 0).all()
    x, ok = scene.read(0, 0, 16)
    assert not ok[:, :8, :8].any() and ok[:, 8:, 8:].all()  # the fill corner
    state = HdfScene(granule, [Band("state_1km")])  # the 1 km grid: half the pixels, twice their size
    assert state.grid == "MODIS_Grid_1km_2D" and state.transform.a == pytest.approx(2 * scene.transform.a)


def test_cloud_mask_invalidates_the_pixels_state_1km_flags_cloudy(granule, tmp_path):
    state = _raw(granule, "state_1km_1").repeat(2, 0).repeat(2, 1)  # [64, 64]: each 1 km flag on its 2 x 2 pixels
    cloudy = (state & 0b11 == 0b01) | (state & 0b11 == 0b10) | (state & 0b100 > 0)
    assert 0 < cloudy.mean() < 1
    plain, masked = HdfScene(granule, BANDS), open_scene(granule, BANDS, cloud_mask=True)
    for row, col in ((5, 7), (0, 0), (50, 41)):  # odd offsets: the flags must line up with the 500 m pixels
        x, ok = plain.read(row, col, 16)
        y, ok_masked = masked.read(row, col, 16)
        inside = cloudy[row:row + 16, col:col + 16]
        h, w = inside.shape
        np.testing.assert_array_equal(ok_masked[:, :h, :w], ok[:, :h, :w] & ~inside)
        np.testing.assert_array_equal(y[ok_masked], x[ok_masked])
    with pytest.raises(DataError, match="state_1km QC flags"):
        HdfScene(_plain_eos(tmp_path / "no_state.hdf"), BANDS[:1], cloud_mask=True)


def _plain_eos(path):
    """A one-grid HDF4-EOS file without QC flags."""
    from pyhdf.SD import SD, SDC

    sd = SD(str(path), SDC.WRITE | SDC.CREATE)
    sds = sd.create("sur_refl_b01_1", SDC.INT16, (8, 8))
    sds[:] = np.ones((8, 8), np.int16)
    sds.endaccess()
    side = synthetic.SINUSOIDAL_TILE_M
    sd.attr("StructMetadata.0").set(SDC.CHAR8, synthetic.struct_metadata({"G": (8, ["sur_refl_b01_1"])},
                                                                         (0.0, side), (side, 0.0)))
    sd.end()
    return path


def test_only_the_requested_window_is_read(granule):
    scene = HdfScene(granule, BANDS[:2])
    asked = []

    class Spy:
        def __init__(self, sds):
            self.sds = sds

        def __getitem__(self, key):
            asked.append(key)
            return self.sds[key]

    scene._sds = [Spy(s) for s in scene._sds]
    scene.read(10, 20, 16)
    assert asked == [(slice(10, 26), slice(20, 36))] * 2


def _plain_hdf4(path):
    from pyhdf.SD import SD, SDC

    sd = SD(str(path), SDC.WRITE | SDC.CREATE)
    sds = sd.create("sur_refl_b01_1", SDC.INT16, (4, 4))
    sds[:] = np.zeros((4, 4), np.int16)
    sds.endaccess()
    sd.end()
    return path


def test_bad_granules_are_data_errors_naming_the_file(granule, tmp_path):
    import h5py

    plain = _plain_hdf4(tmp_path / "plain.hdf")
    with pytest.raises(DataError, match="without StructMetadata.0.*HDF4-EOS granule") as e:
        HdfScene(plain, BANDS)
    assert "plain.hdf" in str(e.value)
    with pytest.raises(DataError, match=r"missing \['sur_refl_b09'\]"):
        HdfScene(granule, [Band("sur_refl_b01"), Band("sur_refl_b09")], grid="MODIS_Grid_500m_2D")
    with pytest.raises(DataError, match="one grid holding the bands"):
        HdfScene(granule, [Band("sur_refl_b01"), Band("state_1km")])
    with pytest.raises(DataError, match="a grid named 'MODIS_Grid_250m_2D'"):
        HdfScene(granule, BANDS, grid="MODIS_Grid_250m_2D")
    truncated = tmp_path / "truncated.hdf"
    truncated.write_bytes(granule.read_bytes()[: granule.stat().st_size // 3])
    with pytest.raises(DataError, match="truncated.hdf.*HDF4 library cannot read"):
        HdfScene(truncated, BANDS).read(0, 0, 64)
    with h5py.File(tmp_path / "eos5.hdf", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataError, match="an HDF5 file"):
        open_scene(tmp_path / "eos5.hdf", BANDS)


def test_the_mod09ga_configuration_pretrains_on_granules_out_of_the_box_and_on_a_folder(tmp_path, capsys):
    import json
    from pathlib import Path

    from scimae.__main__ import info
    from scimae.pipelines import geo_pretrain

    config = Path(geo_pretrain.__file__).parents[1] / "configs" / "geo_pretrain_mod09ga.yaml"
    geo_pretrain.main(["--config", str(config), f"data.synthetic.folder={tmp_path / 'data'}", "data.synthetic.tiles=4",
                       "data.windows_per_scene=4", "model.dim=32", "model.depth=1", "model.decoder_dim=32",
                       "model.decoder_depth=1", "train.epochs=1", "train.batch_size=4",
                       f"train.out_dir={tmp_path / 'runs'}", "train.run_name=m"])
    export = json.loads((tmp_path / "runs" / "m" / "export" / "config.json").read_text())
    assert [b["name"] for b in export["bands"]] == synthetic.MOD09GA_BANDS
    assert [g["name"] for g in export["groups"]] == ["visible", "nir", "swir"]
    assert len(list((tmp_path / "data").rglob("MOD09GA.*.hdf"))) == 4
    granules = tmp_path / "laads" / "2008" / "296"  # a user's folder of granules, in subfolders as downloaded
    granules.mkdir(parents=True)
    for path in sorted((tmp_path / "data").rglob("MOD09GA.*.hdf"))[:2]:
        (granules / path.name).write_bytes(path.read_bytes())
    geo_pretrain.main(["--config", str(config), "--data", str(tmp_path / "laads"), "data.windows_per_scene=4",
                       "data.val_fraction=0.5", "data.cloud_mask=true", "model.dim=32", "model.depth=1",
                       "model.decoder_dim=32", "model.decoder_depth=1", "train.epochs=1", "train.batch_size=4",
                       f"train.out_dir={tmp_path / 'runs'}", "train.run_name=d"])
    info(str(tmp_path / "runs" / "d" / "export"))  # scimae info
    assert "band sur_refl_b07: kind reflectance" in capsys.readouterr().out


def _satvision_bands() -> list[Band]:
    return [Band(b, "brightness_temperature" if b[1:] in WAVENUMBERS else "reflectance") for b in SATVISION_TOA_BANDS]


def test_planck_inversion_matches_a_hand_computed_radiance():
    # band 31 (908.0884 cm^-1 = 11.0122 um) at 300 K: 2hc^2 / (um^5 (exp(hc / (k um T)) - 1)) = 9.5666 W m^-2 sr^-1 um^-1
    assert brightness_temperature(np.array(9.5666), "31") == pytest.approx(300.0, abs=0.01)
    assert brightness_temperature(np.array(0.48196), "20") == pytest.approx(300.0, abs=0.01)  # 3.7853 um, 300 K


def test_l1b_swath_bands_are_toa_reflectance_and_brightness_temperature(tmp_path):
    path = tmp_path / "MOD021KM.A2019001.0000.061.2019001120000.hdf"
    truth = synthetic.write_mod021km(path, np.random.default_rng(1), rows=40, cols=30)
    scene = open_scene(path, _satvision_bands())
    assert isinstance(scene, SwathScene) and scene.crs is None and (scene.height, scene.width) == (40, 30)
    x, ok = scene.read(8, 0, 32)  # 32 rows from row 8: the bottom row's flagged pixels, and 2 columns past the edge
    for i, band in enumerate(SATVISION_TOA_BANDS):
        true = truth[band][8:40, :30]
        assert not ok[i, -1, 28:30].any() and not ok[i, :, 30:].any()  # raw values above 32767, outside the swath
        inside = ok[i, :32, :30]
        assert inside.sum() == 32 * 30 - 2
        tolerance = 0.01 if band[1:] in WAVENUMBERS else 1e-4  # K; reflectance
        np.testing.assert_allclose(x[i, :32, :30][inside], true[inside], atol=tolerance)
    with pytest.raises(DataError, match="b31 is brightness_temperature"):
        SwathScene(path, [Band("b31", "reflectance")])
    with pytest.raises(DataError, match=r"missing \['b37'\]"):
        SwathScene(path, [Band("b37")])
    with pytest.raises(DataError, match="an L1B swath"):
        open_scene(path, [Band("b01")], cloud_mask=True)


def test_swath_geolocation_interpolates_the_5km_samples_and_crosses_the_antimeridian():
    from scimae.domains.remote_sensing.transforms import swath_geolocation

    k = np.arange(6)[:, None] + np.zeros(5)  # [6, 5]: sample (i, j) lies on 1 km pixel (2 + 5i, 2 + 5j)
    lat, lon = 40 - 0.05 * k, (179.9 + 0.05 * k + 180) % 360 - 180  # longitude wraps from 179.95 to -179.95
    rows, cols = np.arange(0, 30), np.arange(0, 25)
    lat_i, lon_i = swath_geolocation(lat, lon, rows, cols)
    np.testing.assert_allclose(lat_i, (40 - 0.05 * (rows - 2) / 5)[:, None] + np.zeros(25), atol=1e-9)  # linear: exact
    unwrapped = 179.9 + 0.05 * (rows - 2) / 5  # [30]: the longitude grows steadily through 180
    np.testing.assert_allclose(lon_i[:, 0], (unwrapped + 180) % 360 - 180, atol=1e-9)
    assert (lon_i >= -180).all() and (lon_i < 180).all()


def test_a_swath_map_is_written_with_ground_control_points(tmp_path):
    import rasterio

    from scimae.domains.remote_sensing.inference import georeference

    path = tmp_path / "MOD021KM.A2019001.0000.061.2019001120000.hdf"
    synthetic.write_mod021km(path, np.random.default_rng(1), rows=40, cols=30)
    scene = SwathScene(path, [Band("b01")])
    pixels = scene.geolocation(0, 0, 40, per_pixel=True)
    assert pixels["lat"].shape == (40, 40) and pixels["lat"][2, 2] == pytest.approx(scene.latitude[0, 0])
    kept = scene.geolocation(10, 4, 16)  # the 5 km samples on pixel rows 12, 17, 22 and columns 7, 12, 17
    assert kept["rows"].tolist() == [2, 7, 12] and kept["cols"].tolist() == [3, 8, 13]
    np.testing.assert_array_equal(kept["lat"], scene.latitude[2:5, 1:4])
    np.testing.assert_array_equal(kept["lon"], scene.longitude[2:5, 1:4])
    np.testing.assert_allclose(pixels["lat"][12:23:5, 7:18:5], kept["lat"], atol=1e-6)  # interpolation passes through them
    with rasterio.open(tmp_path / "map.tif", "w", driver="GTiff", width=30, height=40, count=1, dtype="uint8") as dst:
        georeference(dst, scene, every=2)
    with rasterio.open(tmp_path / "map.tif") as src:
        gcps, crs = src.gcps
    assert crs.to_epsg() == 4326 and len(gcps) == 4 * 3  # 8 x 6 samples, every second one
    assert (gcps[1].row, gcps[1].col, gcps[1].x, gcps[1].y) == pytest.approx(
        (2.5, 12.5, scene.longitude[0, 2], scene.latitude[0, 2]))


def test_geo_predict_maps_a_swath_with_ground_control_points(tmp_path):
    """A classifier fine-tuned on GeoTIFF tiles of bands b01 and b31 maps an L1B granule; the map keeps the
    swath's shape and carries its geolocation as GCPs."""
    import rasterio
    from rasterio.transform import from_origin

    from scimae.pipelines import geo_finetune, geo_predict

    rng = np.random.default_rng(0)
    for k in range(8):  # two classes of 32 x 32 tiles: reflectance and brightness temperature
        folder = tmp_path / "tiles" / ("warm" if k % 2 else "cold")
        folder.mkdir(parents=True, exist_ok=True)
        data = np.stack([rng.uniform(0.1, 0.4, (32, 32)), rng.normal(290 if k % 2 else 255, 2, (32, 32))]).astype("float32")
        with rasterio.open(folder / f"t{k}.tif", "w", driver="GTiff", width=32, height=32, count=2, dtype="float32",
                           crs="EPSG:4326", transform=from_origin(0, 0, 0.01, 0.01)) as dst:
            dst.write(data)
            dst.descriptions = ("b01", "b31")
    bands = "data.bands=[{name: b01, mean: 0.3, std: 0.15}, {name: b31, kind: brightness_temperature, mean: 280, std: 20}]"
    geo_finetune.main(["--data", str(tmp_path / "tiles"), bands, "data.val_fraction=0.25", "model.dim=32", "model.depth=1",
                       "model.decoder_dim=32", "model.decoder_depth=1", "train.epochs=1", "train.batch_size=4",
                       f"train.out_dir={tmp_path / 'runs'}", "train.run_name=cls"])
    swath = tmp_path / "MOD021KM.A2019001.0000.061.2019001120000.hdf"
    synthetic.write_mod021km(swath, rng, rows=40, cols=30)
    geo_predict.main(["--model", str(tmp_path / "runs" / "cls" / "export"), "--input", str(swath),
                      "--out", str(tmp_path / "map.tif")])
    with rasterio.open(tmp_path / "map.tif") as src:
        gcps, crs = src.gcps
        assert src.shape == (40, 30) and src.crs is None and crs.to_epsg() == 4326 and len(gcps) == 8 * 6  # every sample
        assert set(np.unique(src.read(1))) <= {0, 1, 255}
