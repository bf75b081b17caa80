import json
import logging

import numpy as np
import pytest
import torch

from conftest import shared_data
from scimae.core import DataError
from scimae.core.masking import MaskConfig
from scimae.domains.scene3d.data import NerfDataConfig, NerfGrids, PointClouds, PointDataConfig, find_clouds
from scimae.domains.scene3d.io import read_cloud, read_grid, read_h5, write_cloud
from scimae.domains.scene3d.finetune import VoxelHead
from scimae.domains.scene3d.model import (ChamferTarget, NerfModelConfig, OpacityWeightedTarget, PointModelConfig,
                                          PointNetEmbed, PointTokenizer, build_nerf_mae, build_point_mae)
from scimae.domains.scene3d.transforms import (density_to_opacity, farthest_point_sample, group_points, has_pytorch3d,
                                               knn, normalize_unit_sphere, resample)


TINY = dict(dim=32, depth=1, heads=4, decoder_dim=32, decoder_depth=1, decoder_heads=4)


def _o3d():
    import open3d as o3d

    return o3d


def test_clouds_in_every_format_keep_colours_normals_and_drop_non_finite(tmp_path):
    o3d = _o3d()
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(200, 3))
    pts[:7] = np.nan  # an organised scan's empty pixels
    normals, colors = rng.normal(size=(200, 3)), rng.uniform(size=(200, 3))
    for name, kw in (("a.pcd", dict(write_ascii=False, compressed=True)), ("b.pcd", dict(write_ascii=True)),
                     ("c.pcd", dict(write_ascii=False)), ("d.ply", dict(write_ascii=False))):
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
        pc.normals, pc.colors = o3d.utility.Vector3dVector(normals), o3d.utility.Vector3dVector(colors)
        o3d.io.write_point_cloud(str(tmp_path / name), pc, **kw)
        c = read_cloud(tmp_path / name)
        assert c.points.shape == (193, 3) and c.dropped == 7, name
        np.testing.assert_allclose(c.points, pts[7:], atol=1e-5)
        np.testing.assert_allclose(c.colors, colors[7:], atol=1 / 255)
        np.testing.assert_allclose(c.normals, normals[7:], atol=1e-5)
    np.savetxt(tmp_path / "e.xyz", pts[7:])
    np.savetxt(tmp_path / "f.pts", pts[7:], header="193", comments="")  # PTS: a count line, then points
    for name in ("e.xyz", "f.pts"):
        np.testing.assert_allclose(read_cloud(tmp_path / name).points, pts[7:], atol=1e-5)
    header = ("# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 3\nHEIGHT 2\n"
              "VIEWPOINT 0 0 0 1 0 0 0\nPOINTS 6\nDATA ascii\n")  # an organised 3 x 2 scan with 2 empty pixels
    (tmp_path / "organised.pcd").write_text(header + "1 2 3\nnan nan nan\n4 5 6\n7 8 9\nnan nan nan\n1 1 1\n")
    org = read_cloud(tmp_path / "organised.pcd")
    assert org.points.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 1, 1]] and org.dropped == 2
    np.save(tmp_path / "g.npy", np.concatenate([pts, normals], 1))
    g = read_cloud(tmp_path / "g.npy")
    assert g.dropped == 7 and g.normals.shape == (193, 3)


def test_meshes_are_sampled_and_bad_clouds_are_data_errors(tmp_path):
    o3d = _o3d()
    box = o3d.geometry.TriangleMesh.create_box(2, 2, 2)
    for name in ("box.off", "box.obj", "box.ply"):
        o3d.io.write_triangle_mesh(str(tmp_path / name), box)
        c = read_cloud(tmp_path / name, mesh_points=500)
        assert c.points.shape == (500, 3) and c.normals is not None
        assert c.points.min() >= -1e-6 and c.points.max() <= 2 + 1e-6
    (tmp_path / "verts.off").write_text("OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n")
    with pytest.raises(DataError, match=r"verts.off: found a file open3d could not read whole \(.*no vertices or faces"):
        read_cloud(tmp_path / "verts.off")
    (tmp_path / "verts.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(DataError, match="verts.obj: found a mesh of .* vertices and no faces; expected faces"):
        read_cloud(tmp_path / "verts.obj")
    (tmp_path / "empty.xyz").write_text("")
    with pytest.raises(DataError, match="empty.xyz: found no points"):
        read_cloud(tmp_path / "empty.xyz")
    np.save(tmp_path / "nan.npy", np.full((10, 3), np.nan))
    with pytest.raises(DataError, match="10 points, none of them finite"):
        read_cloud(tmp_path / "nan.npy")
    np.save(tmp_path / "bad.npy", np.zeros((10, 4)))
    with pytest.raises(DataError, match=r"shape \(10, 4\)"):
        read_cloud(tmp_path / "bad.npy")
    (tmp_path / "x.las").write_text("?")
    with pytest.raises(DataError, match="x.las: found a .las file"):
        read_cloud(tmp_path / "x.las")
    for name in ("cut.ply", "cut.pcd"):  # open3d returns a cut PLY at full length, the rest uninitialised
        write_cloud(tmp_path / name, np.random.default_rng(0).random((1000, 3)))
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(DataError, match=rf"{name}: found a file open3d could not read whole \(.*failed"):
            read_cloud(tmp_path / name)


def test_hdf5_clouds_with_labels(tmp_path):
    import h5py

    with h5py.File(tmp_path / "train0.h5", "w") as f:
        f["data"] = np.random.default_rng(0).normal(size=(5, 100, 3)).astype(np.float32)
        f["label"] = np.array([[3], [1], [0], [3], [2]], np.uint8)
    data, labels = read_h5(tmp_path / "train0.h5")
    assert data.shape == (5, 100, 3) and labels.tolist() == [3, 1, 0, 3, 2]
    entries, _ = find_clouds(tmp_path)
    assert [e.label for e in entries] == [3, 1, 0, 3, 2] and entries[4].index == 4
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["points"] = np.zeros((2, 10, 3))
    with pytest.raises(DataError, match="bad.h5: found datasets \\['points'\\]; expected a 'data' dataset"):
        read_h5(tmp_path / "bad.h5")


def test_normalisation_and_resampling():
    rng = np.random.default_rng(0)
    p = normalize_unit_sphere(rng.normal(5, 3, (100, 3)))
    assert np.allclose(p.mean(0), 0, atol=1e-5) and np.isclose(np.sqrt((p ** 2).sum(1)).max(), 1)
    assert len(resample(p, 50, rng)) == 50 and len(np.unique(resample(p, 100, rng), axis=0)) == 100
    assert resample(p, 300, rng).shape == (300, 3)


def test_too_few_points_warn_once_then_fail_under_the_floor(tmp_path, caplog):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "small.npy", rng.normal(size=(100, 3)))
    ds = PointClouds(find_clouds(tmp_path)[0], PointDataConfig(n_points=300, n_groups=16, group_size=16), train=True)
    with caplog.at_level(logging.WARNING):
        assert ds[0]["points"].shape == (300, 3) and ds[0]["y"] == -1
    assert caplog.text.count("small.npy: 100 points, fewer than 300; resampled with replacement") == 1
    ds = PointClouds(find_clouds(tmp_path)[0], PointDataConfig(n_points=300, min_points=128), train=True)
    with pytest.raises(DataError, match="small.npy: found 100 points; expected at least 128"):
        ds[0]
    assert density_to_opacity(np.array([-1.0, 0.0, np.log(2)]), "alpha", 1.0) == pytest.approx([0, 0, 0.5])
    assert density_to_opacity(np.array([-1.0, 0.5, 3.0]), "clip").tolist() == [0, 0.5, 1]


def _fps_reference(points: np.ndarray, k: int) -> list[int]:
    chosen = [0]
    d = ((points - points[0]) ** 2).sum(1)
    for _ in range(k - 1):
        chosen.append(int(d.argmax()))
        d = np.minimum(d, ((points - points[chosen[-1]]) ** 2).sum(1))
    return chosen


def test_fps_and_knn_match_a_direct_reference():
    pts = torch.rand(3, 300, 3, generator=torch.Generator().manual_seed(0))
    idx = farthest_point_sample(pts, 16, use_pytorch3d=False)
    for b in range(3):
        assert idx[b].tolist() == _fps_reference(pts[b].numpy().astype(np.float64), 16)
    q = pts[:, :5]
    nn_idx = knn(q, pts, 8, use_pytorch3d=False)  # [B, 5, 8]
    d = ((q[:, :, None] - pts[:, None]) ** 2).sum(-1)
    assert torch.equal(nn_idx, d.argsort(-1)[..., :8]) and (nn_idx[..., 0] == torch.arange(5)).all()
    centres, neigh = group_points(pts, 16, 8)
    assert centres.shape == (3, 16, 3) and neigh.shape == (3, 16, 8, 3)
    assert torch.allclose(neigh[:, :, 0], torch.zeros(3, 16, 3))  # the nearest point is the centre itself


def test_the_data_workers_fps_agrees_with_the_step_and_the_tokenizer_uses_it(tmp_path):
    """With open3d, each cloud comes with its FPS centres (index order); they are the torch FPS's set, and the
    tokenizer's groups from them are the step's own groups, up to their order."""
    np.save(tmp_path / "c.npy", np.random.default_rng(0).normal(size=(700, 3)))
    ds = PointClouds(find_clouds(tmp_path)[0], PointDataConfig(n_points=512, n_groups=32, group_size=16), train=True)
    sample = ds[0]
    points, centres = sample["points"][None], sample["centres"][None]  # [1, 512, 3], [1, 32]
    assert centres.tolist() == [sorted(_fps_reference(points[0].numpy().astype(np.float64), 32))]
    tok = PointTokenizer(32, 16, 24)
    given, own = tok({"points": points, "centres": centres}), tok({"points": points})
    order = own.coords[0].argsort(0)[:, 0], given.coords[0].argsort(0)[:, 0]  # both orders by x
    torch.testing.assert_close(given.coords[0, order[1]], own.coords[0, order[0]])
    torch.testing.assert_close(given.target[0, order[1]], own.target[0, order[0]])
    with pytest.raises(ValueError, match=r"batch 'centres' must be \[1, 32\] point indices"):
        tok({"points": points, "centres": centres[:, :8]})


@pytest.mark.skipif(not has_pytorch3d(), reason="pytorch3d is not installed (no CPU build for this torch)")
def test_pytorch3d_and_torch_give_the_same_groups():
    pts = torch.rand(2, 500, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(farthest_point_sample(pts, 32, True), farthest_point_sample(pts, 32, False))
    assert torch.equal(knn(pts[:, :20], pts, 16, True), knn(pts[:, :20], pts, 16, False))


def test_pointnet_embedding_is_the_concatenated_form_and_ignores_point_order():
    torch.manual_seed(0)
    emb = PointNetEmbed(32, hidden=16)
    groups = torch.randn(2, 5, 8, 3)  # [B, G, k, 3]
    out = emb(groups)  # [B, G, D]
    f = emb.first(groups)  # Point-MAE: one linear layer on [point feature, group max] of every point
    joined = torch.cat([f, f.amax(-2, keepdim=True).expand_as(f)], -1)
    ref = emb.second(joined).amax(-2)
    assert out.shape == (2, 5, 32)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(emb(groups[:, :, torch.randperm(8)]), out, rtol=1e-5, atol=1e-5)


def test_point_mae_embeds_only_what_it_is_asked_and_scores_by_chamfer():
    for strategy in ("random", "block"):
        mae = build_point_mae(PointModelConfig(**TINY, mask=MaskConfig(strategy, 0.6)), 16, 8)
        batch = {"points": torch.randn(2, 128, 3)}
        out = mae(batch, torch.Generator().manual_seed(0))
        out["loss"].backward()
        assert out["plan"].mask.sum(1).tolist() == [10, 10] and torch.isfinite(out["loss"])
    ts = mae.encoder.tokenizer(batch)
    idx = torch.tensor([[3, 0], [15, 7]])
    torch.testing.assert_close(ts.embed(idx), ts.embed().gather(1, idx[..., None].expand(-1, -1, 32)))
    target = ChamferTarget()
    exact = ts.target.gather(1, idx[..., None].expand(-1, -1, 24))
    shuffled = exact.reshape(2, 2, 8, 3)[:, :, torch.randperm(8)].reshape(2, 2, 24)  # order does not matter
    assert target(shuffled, ts, idx, torch.ones(2, 2), ["points"])["loss"] < 1e-10
    assert target(exact + 0.1, ts, idx, torch.ones(2, 2), ["points"])["loss"] > 1e-3
    with pytest.raises(ValueError, match="at least 16 points"):
        mae.encoder.tokenizer({"points": torch.randn(1, 10, 3)})


def _grid_file(path, size=(12, 12, 12), **extra):
    rng = np.random.default_rng(0)
    rgbsigma = np.concatenate([rng.uniform(0, 1, (*size, 3)), rng.uniform(-1, 30, (*size, 1))], -1)
    np.savez(path, rgbsigma=rgbsigma.astype(np.float32), **extra)
    return path


def test_nerf_grids_pad_as_invalid_and_bad_npz_are_data_errors(tmp_path):
    mask = np.ones((12, 12, 12), bool)
    mask[8:] = False
    labels = np.ones((12, 12, 12), np.uint8)
    f = _grid_file(tmp_path / "a.npz", mask=mask, labels=labels)
    s = NerfGrids([f], NerfDataConfig(grid=(16, 16, 16), patch=4))[0]
    assert s["image"].shape == (1, 4, 16, 16, 16) and s["patch_valid"].shape == (1, 4, 4, 4)
    expected = torch.zeros(4, 4, 4, dtype=torch.bool)
    expected[:2, :3, :3] = True  # the mask ends at 8, the grid at 12 of 16
    assert torch.equal(s["patch_valid"][0], expected)
    assert (s["labels"][:8, :12, :12] == 1).all() and (s["labels"][8:] == 255).all()
    assert 0 <= s["image"][0, 3].min() and s["image"][0, 3].max() <= 1 and (s["image"][0, :, 8:] == 0).all()
    np.savez(tmp_path / "b.npz", density=np.zeros((4, 4, 4)))
    with pytest.raises(DataError, match="b.npz: found arrays \\['density'\\]; expected an 'rgbsigma' array"):
        read_grid(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", rgbsigma=np.zeros((4, 4, 4, 3)))
    with pytest.raises(DataError, match=r"c.npz: found 'rgbsigma' of shape \(4, 4, 4, 3\)"):
        read_grid(tmp_path / "c.npz")


def test_opacity_weighted_loss_ignores_colour_in_empty_space_and_voxel_head_shapes():
    mae = build_nerf_mae(NerfModelConfig(**TINY), (8, 8, 8), 4)
    image = torch.rand(2, 1, 4, 8, 8, 8)
    image[:, :, 3] = (image[:, :, 3] > 0.5).float()
    batch = {"image": image, "present": torch.ones(2, 1, dtype=torch.bool)}
    ts = mae.encoder.tokenizer(batch)
    idx = torch.arange(8)[None].expand(2, -1)
    target = OpacityWeightedTarget()
    pred = ts.target.clone().reshape(2, 8, -1, 4)
    empty = pred[..., 3:] == 0
    pred[..., :3] = torch.where(empty, torch.rand_like(pred[..., :3]), pred[..., :3])  # colour where nothing is
    losses = target(pred.reshape(2, 8, -1), ts, idx, torch.ones(2, 8), ["rgba"])
    assert losses["loss"] < 1e-10
    pred[..., 3] += 0.5
    assert target(pred.reshape(2, 8, -1), ts, idx, torch.ones(2, 8), ["rgba"])["loss/opacity"] == pytest.approx(0.25)
    head = VoxelHead(mae.encoder, 5)
    logits = head(batch)
    assert logits.shape == (2, 5, 8, 8, 8)
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 5, (2, 8, 8, 8))).backward()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from scimae.pipelines import nerf_pretrain
    from scimae.pipelines import pointcloud_finetune
    from scimae.pipelines import pointcloud_pretrain

    tmp = tmp_path_factory.mktemp("s3d")
    data = [f"data.synthetic.folder={tmp / 'data'}", "data.synthetic.per_class=8", "data.synthetic.rooms=4"]
    small = ["model.dim=32", "model.depth=1", "model.decoder_dim=32", "model.decoder_depth=1", "train.epochs=1",
             "train.epoch_repeats=1", "train.batch_size=8", f"train.out_dir={tmp / 'runs'}"]
    points = ["data.n_points=256", "data.n_groups=16", "data.group_size=16"]
    pointcloud_pretrain.main(data + small + points + ["train.run_name=pre"])
    pointcloud_finetune.main(data + small + points + ["train.run_name=ft", f"--init-from={tmp / 'runs/pre/export'}"])
    nerf_pretrain.main(data + small + ["data.grid=[16, 16, 16]", "train.batch_size=2", "train.run_name=nerf"])
    return tmp


def test_point_pipelines_write_native_data_exports_and_figures(runs):
    shapes = runs / "data" / "shapes"
    files = sorted(shapes.rglob("*.*"))
    assert {p.suffix for p in files} == {".ply", ".pcd"} and {p.parent.name for p in files} == {"left", "right"}
    assert b"binary_compressed" in next(p for p in files if p.suffix == ".pcd").read_bytes()[:400]
    pre = runs / "runs" / "pre"
    assert (pre / "export" / "model.safetensors").is_file() and (pre / "recon_epoch001.png").is_file()
    config = json.loads((pre / "export" / "config.json").read_text())
    assert config["n_groups"] == 16 and 0 < len(config["held_out"]) < len(files)
    assert set(config["held_out"]) <= {str(p) for p in files}
    ft = runs / "runs" / "ft"
    assert 0 <= json.loads((ft / "svm_probe.json").read_text())["accuracy"] <= 1
    config = json.loads((ft / "export" / "config.json").read_text())
    assert config["classes"] == ["left", "right"]


def test_nerf_pipeline_writes_grids_export_and_figure(runs):
    rooms = sorted((runs / "data" / "rooms").glob("*.npz"))
    g = read_grid(rooms[0])
    assert g["rgbsigma"].shape == (32, 32, 32, 4) and g["labels"].max() >= 2 and not g["mask"].all()
    nerf = runs / "runs" / "nerf"
    assert (nerf / "export" / "model.safetensors").is_file() and (nerf / "recon_epoch001.png").is_file()
    assert {"loss/rgb", "loss/opacity"} <= set((nerf / "metrics.csv").read_text().splitlines()[0].split(","))


def test_real_point_clouds_read_group_and_step():
    root = shared_data("point_cloud")
    bunny = read_cloud(root / "bun_zipper.ply", mesh_points=4096)  # a mesh: sampled on its faces
    assert bunny.points.shape == (4096, 3) and bunny.normals is not None
    scan = read_cloud(root / "bunny_bun000_scan.xyz")
    assert scan.points.shape == (40256, 3)
    milk, car = read_cloud(root / "milk_color.pcd"), read_cloud(root / "car6.pcd")
    assert milk.colors is not None and len(milk.points) == 13704 and len(car.points) == 10031
    cfg = PointDataConfig(root=str(root), n_points=512, n_groups=32, group_size=16)
    entries, _ = find_clouds(root)
    ds = PointClouds(entries, cfg, train=True)
    batch = {"points": torch.stack([ds[i]["points"] for i in range(len(ds))])}
    assert batch["points"].shape == (4, 512, 3)
    mae = build_point_mae(PointModelConfig(**TINY), 32, 16)
    out = mae(batch, torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


def test_mirror_images_share_every_summary_statistic_and_a_probe_on_them_stays_near_chance():
    """Left and right objects are mirror images: the rotation- and reflection-invariant statistics are the
    same for a cloud and its mirror, and a logistic regression on them stays within 10 points of chance."""
    from scipy.spatial.transform import Rotation

    from scimae.core.evaluate import logistic_predict
    from scimae.domains.scene3d import synthetic
    from scimae.domains.scene3d.transforms import summary_statistics

    rng = np.random.default_rng(0)
    points = torch.from_numpy(synthetic.shape_cloud("propeller", "right", rng)[0][:1024])[None]  # [1, N, 3]
    turned = points @ torch.from_numpy(Rotation.random(random_state=1).as_matrix()).float().T
    mirrored = points * torch.tensor([-1.0, 1.0, 1.0])
    assert torch.allclose(summary_statistics(points), summary_statistics(mirrored), atol=1e-4)
    assert torch.allclose(summary_statistics(points), summary_statistics(turned), atol=1e-4)

    features, labels = [], []
    for i in range(240):
        hand = synthetic.SHAPES[i % 2]
        cloud = synthetic.shape_cloud(synthetic.FAMILIES[i // 2 % 4], hand, rng)[0]
        cloud = resample(normalize_unit_sphere(cloud), 1024, rng)
        features.append(summary_statistics(torch.from_numpy(cloud)[None]))
        labels.append(i % 2)
    x, y = torch.cat(features).double().numpy(), np.array(labels)
    accuracy = (logistic_predict(x[:120], y[:120], x[120:]) == y[120:]).mean()
    assert abs(accuracy - 0.5) <= 0.10, accuracy


def test_point_finetune_validates_on_a_separate_folder_when_given(runs, tmp_path, capsys):
    import shutil

    from scimae.pipelines import pointcloud_finetune

    shapes = runs / "data" / "shapes"
    args = ["--data", str(shapes), "model.dim=32", "model.depth=1", "train.epochs=1", "train.epoch_repeats=1",
            "train.batch_size=4", "task.labels_per_class=2", "data.n_points=256", "data.n_groups=16",
            "data.group_size=16", f"train.out_dir={tmp_path}"]
    model = pointcloud_finetune.main(args + [f"data.val_root={shapes}", "train.run_name=sep"])
    n_clouds = len(list(shapes.rglob("*.p*")))
    assert f"fine-tuned ({n_clouds} validation clouds)" in capsys.readouterr().out
    batch = next(iter(torch.utils.data.DataLoader(
        PointClouds(find_clouds(shapes)[0][:2], PointDataConfig(n_points=256, n_groups=16, group_size=16), False),
        batch_size=2)))
    assert model(batch).shape == (2, 2)
    from scimae.domains.scene3d.finetune import load_point_classifier

    loaded, config = load_point_classifier(tmp_path / "sep" / "export")  # the export gives the same model
    assert config["classes"] == find_clouds(shapes)[1]
    torch.testing.assert_close(loaded(batch), model.eval()(batch))
    other = tmp_path / "other"
    shutil.copytree(shapes / "left", other / "left")
    with pytest.raises(DataError, match=r"other: found classes \['left'\]"):
        pointcloud_finetune.main(args + [f"data.val_root={other}", "train.run_name=bad"])
