import numpy as np
import pytest
import torch

from scimae.core.embed import CoordEmbed, GridTokenizer, GroupEmbed, PatchEmbed, patchify, sincos_nd, unpatchify


@pytest.mark.parametrize("spatial,patch", [((12,), (4,)), ((8, 12), (4, 2)), ((4, 8, 6), (2, 4, 3))])
def test_patchify_round_trip(spatial, patch):
    x = torch.randn(2, 3, *spatial)
    p = patchify(x, patch)
    n = int(np.prod([s // q for s, q in zip(spatial, patch)]))
    assert p.shape == (2, n, 3 * int(np.prod(patch)))
    grid = [s // q for s, q in zip(spatial, patch)]
    assert torch.equal(unpatchify(p, patch, grid, 3), x)


def test_patchify_first_patch_holds_the_corner_values():
    x = torch.arange(2 * 4 * 4.0).reshape(1, 2, 4, 4)
    p = patchify(x, (2, 2))  # values in (p, q, c) order, as in MAE
    expected = torch.stack([x[0, :, :2, :2].permute(1, 2, 0)]).reshape(1, -1)
    assert torch.equal(p[:, 0], expected)


def test_patch_size_must_divide():
    with pytest.raises(ValueError, match="must divide"):
        patchify(torch.zeros(1, 1, 10, 10), (3, 3))


@pytest.mark.parametrize("d", [1, 2, 3])
def test_patch_embed_equals_strided_conv(d):
    patch = (2,) * d
    emb = PatchEmbed(patch, 3, 8)
    conv = [torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d][d - 1](3, 8, patch, stride=patch)
    # the linear weight is laid out (p..., c): move channels last to compare with the conv kernel
    w = conv.weight.permute(0, *range(2, 2 + d), 1).reshape(8, -1)
    emb.proj.weight.data.copy_(w)
    emb.proj.bias.data.copy_(conv.bias.data)
    x = torch.randn(2, 3, *(4,) * d)
    ref = conv(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(emb(x), ref, atol=1e-5, rtol=1e-5)


def _mae_1d(dim, pos):
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def _mae_2d(dim, h, w):  # the original MAE formula (get_2d_sincos_pos_embed), generalised to h x w
    grid = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    grid = np.stack(grid, axis=0).reshape([2, 1, h, w])
    return np.concatenate([_mae_1d(dim // 2, grid[0]), _mae_1d(dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("dim,h,w", [(64, 14, 14), (32, 4, 6)])
def test_sincos_2d_matches_mae(dim, h, w):
    ours = sincos_nd(dim, (h, w)).numpy()
    np.testing.assert_allclose(ours, _mae_2d(dim, h, w), atol=1e-6)


def test_sincos_3d_distinguishes_every_position():
    t = sincos_nd(48, (4, 5, 6))
    assert t.shape == (120, 48)
    assert torch.cdist(t, t).add(torch.eye(120) * 10).min() > 1e-3


def test_group_embed_rejects_out_of_range_ids():
    g = GroupEmbed(["t1", "t2"], 4)
    with pytest.raises(ValueError, match="expected 0..1, got 0..2"):
        g(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="unknown group"):
        g.index("flair")


def test_coord_embed_shape_and_sensitivity():
    e = CoordEmbed(3, 16)
    c = torch.randn(2, 5, 3)
    out = e(c)
    assert out.shape == (2, 5, 16)
    assert not torch.allclose(out[:, 0], e(c + 1)[:, 0])


def test_grid_tokenizer_marks_missing_groups_invalid_and_round_trips():
    tok = GridTokenizer(["a", "b", "c"], (8, 8), (4, 4), 16)
    x = torch.randn(2, 3, 1, 8, 8)
    present = torch.tensor([[True, False, True], [True, True, True]])
    ts = tok({"image": x, "present": present})
    assert ts.embed().shape == (2, 12, 16) and ts.grid == (2, 2) and ts.shape == (2, 12, 16)
    idx = torch.tensor([[11, 0, 5], [3, 4, 8]])
    torch.testing.assert_close(ts.embed(idx), ts.embed().gather(1, idx[..., None].expand(-1, -1, 16)))
    # each group has its own projection: the same pixels give different tokens in groups a and b
    same = tok({"image": x[:, :1].expand(-1, 3, -1, -1, -1).contiguous(), "present": present}).embed()
    assert not torch.allclose(same[:, 0] - ts.pos[0, 0], same[:, 4] - ts.pos[0, 4])
    assert ts.valid[0].tolist() == [True] * 4 + [False] * 4 + [True] * 4
    assert ts.group[0].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(tok.unpatchify(ts.target), x)
    with pytest.raises(ValueError, match="expected image"):
        tok({"image": torch.randn(2, 2, 1, 8, 8), "present": present})


def test_grid_tokenizer_projects_each_group_with_its_own_weights_and_gradients():
    tok = GridTokenizer(["a", "b", "c"], (8, 8), (4, 4), 16)
    ts = tok({"image": torch.randn(2, 3, 1, 8, 8), "present": torch.ones(2, 3, dtype=torch.bool)})
    r = torch.randn(2, 4, 16)
    for idx in (torch.tensor([[11, 0, 5, 6], [3, 4, 8, 9]]), torch.tensor([[0, 1, 8, 9], [2, 3, 10, 11]])):
        g = idx // 4  # the group of each slot; the second index picks no slot of group "b"
        p = ts.target.gather(1, idx[..., None].expand(-1, -1, 16))  # [B, K, P]
        ref = torch.einsum("bkp,bkpd->bkd", p, tok.weight[g]) + tok.bias[g] + ts.pos[0][idx]
        grads = torch.autograd.grad((ts.embed(idx) * r).sum(), (tok.weight, tok.bias))
        ref_grads = torch.autograd.grad((ref * r).sum(), (tok.weight, tok.bias))
        torch.testing.assert_close(ts.embed(idx), ref)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b)
    assert grads[0][1].abs().sum() == 0 and grads[0][0].abs().sum() > 0
    every = torch.arange(12)[None].expand(2, -1)
    torch.testing.assert_close(ts.embed(), ts.embed(every))  # all slots at once: the same projections


def test_grid_tokenizer_groups_of_fewer_channels_are_masked_out_of_the_loss():
    from scimae.core.losses import PatchTarget, normalize_patches

    tok = GridTokenizer(["visible", "nir"], (8, 8), (4, 4), 16, channels=3, group_channels=[3, 1])
    x = torch.randn(2, 2, 3, 8, 8)
    x[:, 1, 1:] = 0  # the 1-band group fills channel 0 only
    ts = tok({"image": x, "present": torch.ones(2, 2, dtype=torch.bool)})
    mask = ts.value_mask  # [G, P], values (p..., c)
    assert mask.shape == (2, 48) and mask[0].all() and mask[1].sum() == 16 and mask[1, ::3].all()
    idx = torch.arange(8)[None].expand(2, -1)
    target = PatchTarget("mse", norm_pix=True)
    pred = torch.randn(2, 8, 48)
    noisy = pred.clone()
    noisy[:, 4:, 1::3] += 100  # garbage on the nir group's unused channels
    a, b = target(pred, ts, idx, torch.ones(2, 8), tok.group_names), target(noisy, ts, idx, torch.ones(2, 8), tok.group_names)
    torch.testing.assert_close(a["loss"], b["loss"])
    m = mask[ts.group]  # [B, N, P]
    exact = torch.where(m, normalize_patches(ts.target, m), torch.randn_like(ts.target))  # garbage where unused
    assert target(exact, ts, idx, torch.ones(2, 8), tok.group_names)["loss"] < 1e-10
    plain = normalize_patches(ts.target)  # statistics over the zero padding too: not the target
    assert target(plain, ts, idx, torch.ones(2, 8), tok.group_names)["loss/nir"] > 1e-3
    with pytest.raises(ValueError, match="group_channels"):
        GridTokenizer(["a", "b"], (8, 8), (4, 4), 16, channels=2, group_channels=[3, 1])


def test_a_shared_grid_tokenizer_projects_every_group_with_one_weight():
    torch.manual_seed(0)
    tok = GridTokenizer(["a", "b", "c"], (8,), (4,), 16, shared=True)
    assert tok.weight.shape == (1, 4, 16) and tok.bias.shape == (1, 16)
    x = torch.randn(2, 1, 1, 8).expand(2, 3, 1, 8)  # the same signal in every group
    ts = tok({"image": x, "present": torch.ones(2, 3, dtype=torch.bool)})
    tokens = (ts.embed() - ts.pos).reshape(2, 3, 2, 16)  # the projection alone
    torch.testing.assert_close(tokens[:, 1], tokens[:, 0])
    torch.testing.assert_close(tokens[:, 2], tokens[:, 0])
    tokens.sum().backward()
    assert tok.weight.grad is not None


def test_a_grid_tokenset_leaves_no_reference_cycle_to_keep_the_batch_alive():
    """Freed by reference counting: a cycle would hold each batch's patches until the garbage collector runs, so
    memory would grow by a batch per step at 128^3."""
    import gc

    tok = GridTokenizer(["a", "b"], (8, 8), (4, 4), 16)
    image = torch.randn(2, 2, 1, 8, 8)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        ts = tok({"image": image, "present": torch.ones(2, 2, dtype=torch.bool)})
        few, most = torch.tensor([[0, 5]] * 2), torch.tensor([[0, 1, 2, 3, 4, 6]] * 2)  # both indexing paths
        (ts.embed(few).sum() + ts.embed(most).sum() + ts.embed().sum()).backward()
        del ts
        gc.collect()
        cyclic = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert "Tensor" not in cyclic and "function" not in cyclic, cyclic
