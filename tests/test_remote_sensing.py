import json
import logging

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from conftest import ROOT, shared_data
from scimae.core import DataError
from scimae.core.engine import read_metrics
from scimae.domains.remote_sensing.data import GeoDataConfig, GeoWindows, band_layout
from scimae.domains.remote_sensing.transforms import to_sample
from scimae.domains.remote_sensing.io import Band, StackScene, open_scene
from scimae.domains.remote_sensing.model import GeoModelConfig, build_geo_mae
from scimae.domains.remote_sensing.synthetic import MODIS_BANDS

from scimae.pipelines import geo_pretrain

RGBN = [Band(n) for n in ("R", "G", "B", "NIR")]


def _tif(path, data, crs="EPSG:32614", nodata=0, res=1.0, descriptions=None):
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype,
                   transform=from_origin(500000, 4500000, res, res), nodata=nodata)
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = descriptions
    return path


def test_windowed_reads_pad_past_the_edge_and_mask_nodata(tmp_path):
    data = np.full((4, 20, 30), 50, np.uint8)
    data[:, :, :5] = 0  # nodata column
    scene = open_scene(_tif(tmp_path / "a.tif", data), RGBN)
    assert scene.crs == "EPSG:32614" and (scene.height, scene.width) == (20, 30)
    x, valid = scene.read(-4, 25, 16)
    assert x.shape == (4, 16, 16)
    assert not valid[:, :4].any() and not valid[:, :, 5:].any() and valid[:, 4:, :5].all()
    x, valid = scene.read(0, 0, 8)
    assert not valid[:, :, :5].any() and (x[:, :, 5:] == 50).all()


def test_validity_from_nodata_values_float_fills_and_internal_masks(tmp_path):
    """A file whose validity is its nodata value is read raw and compared with it; NaN and inf are invalid; a file with
    an internal mask (or alpha) is read masked: every way gives GDAL's validity."""
    floats = np.full((4, 8, 8), 0.5, np.float32)
    floats[0, 0, 0], floats[1, 0, 1], floats[2, 0, 2] = -9999.0, np.nan, np.inf
    x, valid = open_scene(_tif(tmp_path / "f.tif", floats, nodata=-9999.0), RGBN).read(0, 0, 8)
    assert not valid[0, 0, 0] and not valid[1, 0, 1] and not valid[2, 0, 2] and valid.sum() == 4 * 64 - 3
    assert (x[~valid] == 0).all() and (x[valid] == 0.5).all()
    data = np.full((4, 8, 8), 7, np.uint16)
    path = _tif(tmp_path / "m.tif", data, nodata=None)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as dst:
        mask = np.full((8, 8), 255, np.uint8)
        mask[2:4, 2:4] = 0
        dst.write_mask(mask)
    x, valid = open_scene(path, RGBN).read(0, 0, 8)
    assert not valid[:, 2:4, 2:4].any() and valid.sum() == 4 * 60 and (x[valid] == 7).all()


def test_bands_by_description_by_file_and_mismatches(tmp_path):
    data = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8) + 1
    scene = open_scene(_tif(tmp_path / "d.tif", data, descriptions=("NIR", "R")), [Band("R"), Band("NIR")])
    x, _ = scene.read(0, 0, 8)
    assert (x[0] == data[1]).all() and (x[1] == data[0]).all()  # by name, not position
    with pytest.raises(DataError, match=r"d.tif: found bands named \['NIR', 'R'\]; expected the bands .* \(missing \['G', 'B'\]\)"):
        open_scene(tmp_path / "d.tif", RGBN)
    with pytest.raises(DataError, match=r"found bands named \['NIR', 'R'\]; expected the bands \['RED', 'NIR_NARROW'\]"):
        open_scene(tmp_path / "d.tif", [Band("RED"), Band("NIR_NARROW")])  # as many bands, other names: never by position
    folder = tmp_path / "perband"
    folder.mkdir()
    _tif(folder / "S2_B04.tif", data[:1])
    _tif(folder / "S2_B08.tif", np.repeat(np.repeat(data[1:], 2, 1), 2, 2)[:, :16, :16], res=0.5)
    with pytest.raises(DataError, match="no file for band B02"):
        open_scene(folder, [Band("B02")])
    scene = open_scene(folder, [Band("B04"), Band("B08")])  # B08 on a finer grid: warped onto B04's
    x, valid = scene.read(0, 0, 8)
    assert x.shape == (2, 8, 8) and valid.all()


def test_not_a_raster_and_no_crs(tmp_path, caplog):
    (tmp_path / "x.tif").write_text("hello")
    with pytest.raises(DataError, match="x.tif: found a file rasterio cannot open as a raster"):
        open_scene(tmp_path / "x.tif", RGBN)
    with caplog.at_level(logging.WARNING):
        open_scene(_tif(tmp_path / "n.tif", np.ones((4, 8, 8), np.uint8), crs=None), RGBN)
    assert "has no CRS; treated as pixel space" in caplog.text


def test_training_windows_per_scene_follow_its_area_by_default(tmp_path):
    big = _tif(tmp_path / "big.tif", np.full((4, 100, 70), 1, np.uint8))  # 27 windows of 16 x 16
    small = _tif(tmp_path / "small.tif", np.full((4, 10, 10), 2, np.uint8))  # less than one: still 1
    ds = GeoWindows([big, small], GeoDataConfig(window=16, patch=8, bands=[Band(b, mean=0) for b in "RGBN"]), train=True)
    assert len(ds) == 28 and [ds.scene_index(i) for i in (0, 26, 27)] == [0, 0, 1]
    assert ds[27]["image"].max() == 2 and ds[26]["image"].max() == 1
    fixed = GeoWindows([big, small], GeoDataConfig(window=16, patch=8, windows_per_scene=3), train=True)
    assert len(fixed) == 6 and len(GeoWindows([big, small], fixed.cfg, train=False)) == 2
    with pytest.raises(ValueError, match="data.windows_per_scene must be >= 1 or null"):
        GeoDataConfig(windows_per_scene=0)


def test_training_windows_skip_all_nodata_and_patches_follow_validity(tmp_path):
    data = np.zeros((4, 64, 64), np.uint8)
    data[:, :16, :16] = 80  # only one corner has data
    _tif(tmp_path / "s.tif", data)
    cfg = GeoDataConfig(root=str(tmp_path), window=16, patch=8, windows_per_scene=6)
    ds = GeoWindows([tmp_path / "s.tif"], cfg, train=True)
    samples = [ds[i] for i in range(6)]
    assert ds.skipped > 0
    assert all(s["patch_valid"].any() for s in samples)
    def patches(valid_columns):
        valid = np.zeros((1, 16, 16), bool)
        valid[:, :, :valid_columns] = True
        return to_sample(np.ones((1, 16, 16), np.float32), valid, 0.0, 1.0, 8, 0.5)["patch_valid"].tolist()

    assert patches(3) == [[[False, False], [False, False]]]  # 3 of a patch's 8 columns: mostly nodata
    assert patches(4) == [[[True, False], [True, False]]]


def test_modis_stack_via_xarray_with_fill_and_scale(tmp_path):
    from scimae.domains.remote_sensing.synthetic import write_modis

    write_modis(tmp_path / "m.nc", np.random.default_rng(0), size=32)
    scene = open_scene(tmp_path / "m.nc", [Band(b) for b in MODIS_BANDS])
    x, valid = scene.read(0, 0, 16)
    assert x.shape == (14, 16, 16) and not valid[:, :4, :4].any() and valid[:, 4:, 4:].all()
    assert 0 < x[0, 8, 8] < 1 and 270 < x[10, 8, 8] < 320  # reflectance and brightness temperature, decoded
    with pytest.raises(DataError, match="missing \\['b15'\\]"):
        open_scene(tmp_path / "m.nc", [Band("b15")])


def test_a_stack_without_an_image_variable_is_a_data_error_naming_it(tmp_path):
    import xarray as xr

    xr.Dataset().to_netcdf(tmp_path / "empty.nc")
    with pytest.raises(DataError, match=r"empty.nc: found data variables \[\]; expected a data variable"):
        open_scene(tmp_path / "empty.nc", [Band("b1")])
    xr.Dataset({"ndvi": ("time", np.zeros(5, np.float32))}).to_netcdf(tmp_path / "series.nc")
    with pytest.raises(DataError, match=r"series.nc: found variable 'ndvi' with dimensions \('band', 'time'\); "
                                        r"expected \(band, y, x\) or \(y, x\)"):
        open_scene(tmp_path / "series.nc", [Band("b1")])
    with pytest.raises(DataError, match=r"found data variables \['ndvi'\]; expected a data variable named 'rho'"):
        StackScene(tmp_path / "series.nc", [Band("b1")], variable="rho")


def test_any_band_subset_by_name_and_both_modes():
    for mode in ("drop", "mask_token"):
        mae = build_geo_mae(GeoModelConfig(dim=32, depth=1, heads=4, decoder_dim=32, decoder_depth=1, decoder_heads=4,
                                           mode=mode), band_layout(["R", "G", "B", "NIR"]), 16, 8)
        batch = {"image": torch.randn(2, 4, 1, 16, 16), "present": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool(),
                 "patch_valid": torch.ones(2, 4, 2, 2, dtype=torch.bool)}
        out = mae(batch, torch.Generator().manual_seed(0))
        out["loss"].backward()
        assert not out["tokenset"].valid[0, 12:].any()
        assert mae.encoder(batch, groups=["R", "G", "B"])["valid"][:, 12:].sum() == 0


def test_spectral_groups_place_bands_and_a_band_subset_leaves_a_group_absent(tmp_path):
    tif = _tif(tmp_path / "a.tif", np.stack([np.full((16, 16), v, np.uint8) for v in (10, 20, 30, 40)]),
               descriptions=("R", "G", "B", "NIR"))
    groups = {"visible": ["R", "G", "B"], "nir": ["NIR"]}
    cfg = GeoDataConfig(window=16, patch=8, bands=[Band(n, mean=0, std=10) for n in ("R", "G", "B", "NIR")],
                        groups=groups)
    s = GeoWindows([tif], cfg, train=False)[0]
    assert s["image"].shape == (2, 3, 16, 16) and s["present"].all()
    assert s["image"][:, :, 0, 0].tolist() == [[1, 2, 3], [4, 0, 0]]  # nir fills channel 0 only
    rgb = GeoDataConfig(window=16, patch=8, bands=[Band(n, mean=0, std=10) for n in ("R", "G", "B")])
    s = GeoWindows([tif], rgb, train=False, layout=groups)[0]
    assert s["present"].tolist() == [True, False] and not s["patch_valid"][1].any()
    mae = build_geo_mae(GeoModelConfig(dim=32, depth=1, heads=4, decoder_dim=32, decoder_depth=1, decoder_heads=4),
                        groups, 16, 8)
    batch = {k: v[None] for k, v in s.items() if k != "transform"}
    assert mae(batch, torch.Generator().manual_seed(0))["tokenset"].valid.tolist() == [[True] * 4 + [False] * 4]
    with pytest.raises(ValueError, match="exactly one non-empty group"):
        GeoDataConfig(bands=[Band(n) for n in ("R", "G", "B", "NIR")], groups={"visible": ["R", "G", "B"]})


def test_pretrain_pipeline_writes_export_metrics_and_figures(tmp_path):
    geo_pretrain.main([f"data.synthetic.folder={tmp_path / 'data'}", "data.synthetic.tiles=10",
                       "data.windows_per_scene=2", "model.dim=32", "model.depth=1", "model.decoder_dim=32",
                       "model.decoder_depth=1", "train.epochs=2", "train.epoch_repeats=1", "train.batch_size=4",
                       f"train.out_dir={tmp_path / 'runs'}", "train.run_name=r"])
    run = tmp_path / "runs" / "r"
    assert (run / "export" / "model.safetensors").is_file() and (run / "recon_epoch002.png").is_file()
    assert {"loss/R", "loss/NIR"} <= set(read_metrics(run)[0])
    tiles = sorted((tmp_path / "data" / "tiles").rglob("*.tif"))
    assert len(tiles) == 10 and {p.parent.name for p in tiles} == {"stripes", "grid", "rings", "blobs"}
    held_out = json.loads((run / "export" / "config.json").read_text())["held_out"]
    assert 0 < len(held_out) < 10 and set(held_out) <= {str(p) for p in tiles}
    with rasterio.open(tiles[0]) as src:
        assert src.crs.to_epsg() == 32614 and src.count == 4 and src.nodata == 0
    assert (tmp_path / "data" / "modis.nc").is_file() and len(list((tmp_path / "data" / "labels").glob("*.tif"))) == 10


def test_real_rasters_read_window_and_step():
    root = shared_data("remote_sensing")
    naip = open_scene(root / "naip" / "m_4709963_se_14_1_20090818.tif", RGBN)
    assert naip.crs.to_epsg() == 26914 and (naip.height, naip.width) == (724, 934)
    landsat = open_scene(root / "landsat" / "RGB.byte.tif", [Band(n) for n in "RGB"])
    _, valid = landsat.read(0, 0, 64)
    assert not valid.any()  # the nodata border
    s2 = open_scene(root / "sentinel2" / "S2_L1C_19UDP_20170729", [Band(f"B{i:02d}") for i in (2, 3, 4, 8)])
    assert s2.crs.to_epsg() == 32619
    modis = open_scene(root / "modis" / "MODIS_ARRAY.nc", [Band("b1")])
    _, valid = modis.read(0, 0, 32)
    assert valid.mean() > 0.5
    cfg = GeoDataConfig(root=str(root / "naip"), window=32, patch=8, bands=[Band(n, mean=110, std=50) for n in "RGB"] + [Band("NIR", mean=110, std=50)])
    ds = GeoWindows([root / "naip" / "m_4709963_se_14_1_20090818.tif"], cfg, train=True)
    batch = {k: torch.stack([ds[i][k] for i in range(4)]) for k in ds[0]}
    mae = build_geo_mae(GeoModelConfig(dim=32, depth=1, heads=4, decoder_dim=32, decoder_depth=1, decoder_heads=4),
                        band_layout(["R", "G", "B", "NIR"]), 32, 8)
    out = mae(batch, torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


@pytest.fixture(scope="module")
def geo_runs(tmp_path_factory):
    from scimae.pipelines import geo_finetune

    tmp = tmp_path_factory.mktemp("geo")
    tiny = [f"data.synthetic.folder={tmp / 'data'}", "data.synthetic.tiles=10", "data.windows_per_scene=2",
            "model.dim=32", "model.depth=1", "model.decoder_dim=32", "model.decoder_depth=1", "train.epochs=1",
            "train.epoch_repeats=1", "train.batch_size=4", f"train.out_dir={tmp / 'runs'}"]
    geo_pretrain.main(tiny + ["train.run_name=pre"])
    export = f"--init-from={tmp / 'runs' / 'pre' / 'export'}"
    geo_finetune.main(tiny + ["train.run_name=cls", export])
    geo_finetune.main(tiny + ["train.run_name=scratch"])
    rgb = "data.bands=[{name: R, mean: 100, std: 55}, {name: G, mean: 100, std: 55}, {name: B, mean: 100, std: 55}]"
    geo_finetune.main(tiny + ["train.run_name=seg", "task.kind=segmentation", rgb, export])
    return tmp


def test_finetune_validates_on_a_separate_folder_when_given(geo_runs, tmp_path, capsys):
    import shutil

    from scimae.pipelines import geo_finetune

    tiles = sorted((geo_runs / "data" / "tiles").rglob("*.tif"))
    last = {p.parent.name: p for p in tiles}  # the last tile of each class validates
    for p in tiles:
        name = "val" if last[p.parent.name] == p else "train"
        (tmp_path / name / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, tmp_path / name / p.parent.name / p.name)
    tiny = ["model.dim=32", "model.depth=1", "train.epochs=1", "train.batch_size=4", f"train.out_dir={tmp_path / 'runs'}"]
    model = geo_finetune.main(["--data", str(tmp_path / "train"), f"data.val_root={tmp_path / 'val'}", *tiny])
    assert "validation (4 tiles" in capsys.readouterr().out and model.export_config["task"]["kind"] == "classification"
    (tmp_path / "val" / "lakes").mkdir()
    shutil.copy(tiles[0], tmp_path / "val" / "lakes" / "x.tif")
    with pytest.raises(DataError, match=r"validation classes \['lakes'\] with no training tiles"):
        geo_finetune.main(["--data", str(tmp_path / "train"), f"data.val_root={tmp_path / 'val'}", *tiny,
                           "train.run_name=bad"])


def test_finetune_classification_and_rgb_segmentation_from_rgbn(geo_runs):
    import json

    cls = json.loads((geo_runs / "runs" / "cls" / "export" / "config.json").read_text())
    assert json.loads((geo_runs / "runs" / "scratch" / "export" / "config.json").read_text())["model"]["dim"] == 32
    seg = json.loads((geo_runs / "runs" / "seg" / "export" / "config.json").read_text())
    assert cls["classes"] == sorted(cls["classes"]) and cls["task"]["kind"] == "classification"
    assert [g["name"] for g in seg["groups"]] == ["R", "G", "B", "NIR"]  # the model's band groups, in order
    assert [b["name"] for b in seg["data_bands"]] == ["R", "G", "B"]  # what the data gives
    rows = read_metrics(geo_runs / "runs" / "seg", "val")
    assert 0 <= float(rows[-1]["miou"]) <= 1 and 0 <= float(rows[-1]["macro_f1"]) <= 1


def test_predict_writes_classes_on_the_input_grid(geo_runs, tmp_path):
    from scimae.pipelines import geo_predict

    tile = sorted((geo_runs / "data" / "tiles").rglob("*.tif"))[4]  # has a nodata border
    out = tmp_path / "classes.tif"
    geo_predict.main(["--model", str(geo_runs / "runs" / "seg" / "export"), "--input", str(tile), "--out", str(out),
                      "--probabilities"])
    with rasterio.open(tile) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform and dst.shape == src.shape
        classes, nodata = dst.read(1), src.read(1) == 0
        assert (classes[nodata] == 255).all() and (classes[~nodata] < 5).all()
    with rasterio.open(tmp_path / "classes_probabilities.tif") as p:
        probs = p.read()
        assert p.count == 5 and np.allclose(probs[:, ~nodata].sum(0), 1, atol=1e-4)
    empty = _tif(tmp_path / "empty.tif", np.zeros((4, 40, 40), np.uint8), descriptions=("R", "G", "B", "NIR"))
    with pytest.raises(DataError, match="entirely nodata"):
        geo_predict.main(["--model", str(geo_runs / "runs" / "seg" / "export"), "--input", str(empty),
                          "--out", str(tmp_path / "e.tif")])


def test_predict_streams_rows_and_blends_windows_as_a_whole_scene_map_would(tmp_path):
    """The map is written a band of rows at a time while windows are read in worker processes: on a scene many
    bands tall (with a nodata corner), the classes and probabilities equal a brute-force blend of every window."""
    from scimae.domains.remote_sensing.inference import blend_weights, predict_scene

    rng = np.random.default_rng(0)
    data = rng.integers(1, 200, (4, 70, 45)).astype(np.uint8)
    data[:, :10, :12] = 0  # nodata
    tile = _tif(tmp_path / "t.tif", data, descriptions=("R", "G", "B", "NIR"))

    class Pixelwise(torch.nn.Module):  # scores from the pixel values: [b, 3, s, s]
        def forward(self, batch):
            x = batch["image"][:, :, 0]  # [b, 4, s, s]
            return torch.stack([x[:, 0], x[:, 1] - x[:, 2], 0.5 * x[:, 3]], 1)

    config = {"data_bands": [{"name": n} for n in "RGB"] + [{"name": "NIR"}], "window": 16, "patch": 4,
              "classes": ["a", "b", "c"], "groups": [{"name": n, "bands": [n]} for n in ("R", "G", "B", "NIR")]}
    predict_scene(Pixelwise(), config, tile, tmp_path / "m.tif", overlap=0.25, probabilities=True, batch_size=5,
                  workers=2)
    x = data.astype(np.float32)
    valid = data[0] != 0
    logits = np.stack([x[0], x[1] - x[2], 0.5 * x[3]])
    acc, wsum = np.zeros((3, 70, 45)), np.zeros((70, 45))
    w = blend_weights(16)
    for r in [0, 12, 24, 36, 48, 54]:  # stride 12, the last window at the bottom edge
        for c in [0, 12, 24, 29]:
            z = np.where(valid[r:r + 16, c:c + 16], logits[:, r:r + 16, c:c + 16], 0)  # invalid pixels read as 0
            p = np.exp(z - z.max(0)) / np.exp(z - z.max(0)).sum(0)
            acc[:, r:r + 16, c:c + 16] += p * w
            wsum[r:r + 16, c:c + 16] += w
    with rasterio.open(tmp_path / "m.tif") as m, rasterio.open(tmp_path / "m_probabilities.tif") as pm:
        classes, probs = m.read(1), pm.read()
    assert (classes[~valid] == 255).all() and (probs[:, ~valid] == -1).all()
    assert np.abs(probs[:, valid] - (acc / wsum)[:, valid]).max() < 1e-4
    assert (classes[valid] == acc.argmax(0)[valid]).all()
    assert not list(tmp_path.glob("*.partial.tif"))


def test_label_raster_on_another_grid_is_an_error(tmp_path):
    from scimae.domains.remote_sensing.data import check_label_grid

    image = _tif(tmp_path / "i.tif", np.ones((4, 16, 16), np.uint8))
    label = _tif(tmp_path / "l.tif", np.ones((1, 8, 8), np.uint8))
    with pytest.raises(DataError, match="l.tif: found a grid \\(8, 8\\).*expected the grid of i.tif"):
        check_label_grid(image, label)


def test_real_naip_prediction_keeps_crs_and_transform(geo_runs, tmp_path):
    from scimae.pipelines import geo_predict

    naip = shared_data("remote_sensing") / "naip" / "m_4709963_se_14_1_20090818.tif"
    out = tmp_path / "naip.tif"
    geo_predict.main(["--model", str(geo_runs / "runs" / "cls" / "export"), "--input", str(naip), "--out", str(out)])
    with rasterio.open(naip) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform and dst.shape == src.shape


def test_samples_carry_their_georeference_and_scenes_share_one_crs(tmp_path, caplog):
    from rasterio.windows import Window, transform as window_transform

    a = _tif(tmp_path / "a.tif", np.full((4, 32, 32), 9, np.uint8))
    b = _tif(tmp_path / "b.tif", np.full((4, 32, 32), 9, np.uint8), crs="EPSG:32615")
    cfg = GeoDataConfig(root=str(tmp_path), window=16, patch=8)
    ds = GeoWindows([a, b], cfg, train=False)
    with rasterio.open(a) as src:
        expected = window_transform(Window(8, 8, 16, 16), src.transform)
    assert tuple(ds[0]["transform"].tolist()) == pytest.approx(tuple(expected)[:6])
    with caplog.at_level(logging.WARNING):
        second = ds.scene(1)
    assert "is in EPSG:32615, not the dataset's EPSG:32614; reprojected" in caplog.text
    assert second.crs == ds.crs and ds.crs.to_epsg() == 32614


def test_modis_band_table_is_a_configuration(tmp_path):
    geo_pretrain.main(["--config", str(ROOT / "configs" / "geo_pretrain_modis.yaml"),
                       f"data.synthetic.folder={tmp_path / 'data'}", "data.synthetic.tiles=5", "data.windows_per_scene=4",
                       "model.dim=32", "model.depth=1", "model.decoder_dim=32", "model.decoder_depth=1",
                       "train.epochs=1", "train.batch_size=4", f"train.out_dir={tmp_path / 'runs'}", "train.run_name=m"])
    import json

    config = json.loads((tmp_path / "runs" / "m" / "export" / "config.json").read_text())
    assert len(config["bands"]) == 14 and config["bands"][10]["kind"] == "brightness_temperature"
    assert config["model"]["mode"] == "mask_token"
    assert [g["name"] for g in config["groups"]] == ["reflective", "emissive"]
    assert (tmp_path / "runs" / "m" / "recon_epoch001.png").is_file()



def test_scene_layouts_share_their_spectra_so_band_statistics_stay_near_chance(tmp_path):
    """Every synthetic tile holds the same covers in the same shares; a logistic regression on per-band
    statistics of the windows the model reads stays within 10 points of chance."""
    from scimae.core.evaluate import logistic_predict
    from scimae.domains.remote_sensing import synthetic
    from scimae.core.data import seeded_split
    from scimae.domains.remote_sensing.data import GeoDataConfig, GeoTasks
    from scimae.domains.remote_sensing.io import labelled_tiles
    from scimae.domains.remote_sensing.synthetic import CLASSES, SHARES, land_cover
    from scimae.domains.remote_sensing.transforms import summary_statistics

    rng = np.random.default_rng(0)
    for layout in CLASSES:
        valid = np.ones((32, 32), bool)
        valid[:, :5] = False
        cover = land_cover(rng, 32, layout, valid)
        assert np.allclose(np.bincount(cover[valid], minlength=3) / valid.sum(), SHARES, atol=1 / valid.sum())
    tiles, names = labelled_tiles(synthetic.write_dataset(tmp_path / "data", n_tiles=240) / "tiles")
    label = {p: sorted(set(names)).index(n) for p, n in zip(tiles, names)}
    cfg = GeoDataConfig()

    def stats(paths):
        data = GeoTasks(paths, cfg, False, 0, None, [label[p] for p in paths])
        items = [data[i] for i in range(len(data))]
        x = summary_statistics(torch.stack([s["image"] for s in items]), torch.stack([s["patch_valid"] for s in items]))
        return x.double().numpy(), np.array([int(s["y"]) for s in items])

    train, val = seeded_split(tiles, 0.25, 0)
    (x_tr, y_tr), (x_va, y_va) = stats(train), stats(val)
    assert abs((logistic_predict(x_tr, y_tr, x_va) == y_va).mean() - 1 / len(CLASSES)) <= 0.10


def test_channel_surgery_keeps_matched_weights_and_starts_unseen_bands_fresh():
    from scimae.domains.remote_sensing.model import match_bands
    from scimae.domains.remote_sensing.model import GeoModelConfig, adapt_bands, build_geo_mae, export_config

    assert match_bands(["B04", "B08", "B8A", "B05"], ["RED", "NIR_NARROW"]) == {
        "B04": "RED", "B08": "NIR_NARROW", "B8A": None, "B05": None}  # each export band feeds one data band
    torch.manual_seed(0)
    cfg = GeoModelConfig(dim=32, depth=1, heads=4, decoder_dim=32, decoder_depth=1, decoder_heads=4)
    layout = {"visible": ["R", "G", "B"], "nir": ["NIR"]}
    mae = build_geo_mae(cfg, layout, 16, 8).eval()
    config = export_config(cfg, GeoDataConfig(window=16, patch=8), layout)
    adapted, new_layout, record = adapt_bands(mae, config, ["B04", "B03", "B02", "RE"])
    assert new_layout == {"visible": ["B04", "B03", "B02"], "nir": ["NIR"], "RE": ["RE"]}
    assert record == {"matched": {"B04": "R", "B03": "G", "B02": "B"}, "absent": ["NIR"], "new": ["RE"]}
    tok = adapted.encoder.tokenizer
    assert tok.group_names == ["visible", "nir", "RE"]
    torch.testing.assert_close(tok.weight[:2], mae.encoder.tokenizer.weight)  # the export's groups keep their weights
    image = torch.randn(2, 3, 3, 16, 16)
    present = torch.tensor([[True, False, False]] * 2)  # visible bands only
    old = mae.encoder({"image": image[:, :2], "present": present[:, :2]})["tokens"]
    new = adapted.encoder.eval()({"image": image, "present": present})["tokens"]
    torch.testing.assert_close(new[:, :4], old[:, :4])  # the same features for the bands both know
