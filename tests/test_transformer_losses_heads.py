import math

import pytest
import torch

from scimae.core.heads import MLPHead, LinearProbe, Pooler
from scimae.core.optim import layer_decay_groups
from scimae.core.tasks import classification_loss, pos_weight_from_labels, survival_loss, survival_risk
from scimae.core.losses import (PatchTarget, chamfer_distance, chamfer_torch, grouped_losses, normalize_patches,
                                ranking_loss, weighted_mse)
from scimae.core.tokens import TokenSet
from scimae.core.transformer import DropPath, Transformer


def test_padded_keys_do_not_change_other_outputs():
    torch.manual_seed(0)
    t = Transformer(16, 2, 4).eval()
    x = torch.randn(2, 6, 16)
    pad = torch.tensor([[False] * 4 + [True] * 2, [False] * 6])
    y = x.clone()
    y[0, 4:] = torch.randn(2, 16) * 100
    torch.testing.assert_close(t(x, pad)[0, :4], t(y, pad)[0, :4])
    torch.testing.assert_close(t(x, pad)[0, :4], t(x[:1, :4])[0])  # padding == dropping the tokens


def test_checkpointing_gives_the_same_output_and_gradient():
    torch.manual_seed(0)
    a = Transformer(16, 2, 4)
    b = Transformer(16, 2, 4, checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 5, 16, requires_grad=True)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb)
    ga, = torch.autograd.grad(ya.sum(), x)
    gb, = torch.autograd.grad(yb.sum(), x)
    torch.testing.assert_close(ga, gb)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_last_rows_only_equal_the_full_output_with_padding_and_bias(checkpointing):
    torch.manual_seed(0)
    t = Transformer(16, 2, 4, checkpointing=checkpointing)
    x = torch.randn(2, 7, 16, requires_grad=True)
    pad = torch.tensor([[False] * 5 + [True] * 2, [False] * 7])
    bias = torch.randn(2, 4, 7, 7)
    for b in (None, bias):
        full, part = t(x, pad, bias=b)[:, 4:], t(x, pad, bias=b, n_out=3)
        assert part.shape == (2, 3, 16)
        torch.testing.assert_close(part, full)
        g_full, = torch.autograd.grad(full.sum(), x)
        g_part, = torch.autograd.grad(part.sum(), x)
        torch.testing.assert_close(g_part, g_full)  # earlier rows still feed the last ones as keys


def test_return_layers_and_drop_path():
    t = Transformer(8, 3, 2)
    out, layers = t(torch.randn(1, 3, 8), return_layers=(1, 3))
    assert len(layers) == 2 and out.shape == (1, 3, 8)
    dp = DropPath(0.5)
    x = torch.ones(1000, 4)
    assert torch.equal(dp.eval()(x), x)
    kept = (dp.train()(x) != 0).float().mean().item()
    assert 0.4 < kept < 0.6


def test_grouped_losses_reduce_only_over_weighted_slots_and_stay_finite():
    err = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    w = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    g = torch.tensor([[0, 0, 1], [0, 1, 1]])
    out = grouped_losses(err, w, g, ["x", "y", "z"])
    assert out["loss"].item() == pytest.approx(2.0)
    assert out["loss/x"].item() == pytest.approx(2.0)
    assert out["loss/y"].item() == 0.0 and math.isfinite(out["loss/z"].item())
    assert [out[f"slots/{n}"].item() for n in "xyz"] == [3.0, 0.0, 0.0]  # the weight behind each group's loss
    assert torch.equal(out["errors"], err)  # the per-slot errors, for HPM's loss predictor
    empty = grouped_losses(err, torch.zeros_like(w), g, ["x", "y"])
    assert all(math.isfinite(v.item()) for k, v in empty.items() if k != "errors")


def test_patch_target_norm_pix_and_l1():
    target = torch.randn(2, 3, 8) * 5 + 2
    ts = TokenSet(tokens=torch.zeros(2, 3, 4), group=torch.zeros(2, 3, dtype=torch.long),
                  valid=torch.ones(2, 3, dtype=torch.bool), pos=torch.zeros(1, 3, 4), target=target)
    idx = torch.tensor([[0, 2], [1, 0]])
    w = torch.ones(2, 2)
    normed = normalize_patches(target)
    exact = normed.gather(1, idx[..., None].expand(-1, -1, 8))
    assert PatchTarget("mse", norm_pix=True)(exact, ts, idx, w, ["g"])["loss"].item() < 1e-10
    t = PatchTarget("l1", norm_pix=True)
    torch.testing.assert_close(t.to_values(exact, ts, idx), target.gather(1, idx[..., None].expand(-1, -1, 8)),
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="'mse' or 'l1'"):
        PatchTarget("huber")


def test_weighted_mse():
    p, t = torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3)
    assert weighted_mse(p, t, torch.tensor([1.0, 0.0, 1.0])).item() == pytest.approx(5.0)


def test_chamfer_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 20, 3, generator=g), torch.randn(3, 30, 3, generator=g)
    ref = []
    for b in range(3):
        dxy = [min(((x[b, i] - y[b, j]) ** 2).sum().item() for j in range(30)) for i in range(20)]
        dyx = [min(((y[b, j] - x[b, i]) ** 2).sum().item() for i in range(20)) for j in range(30)]
        ref.append(sum(dxy) / 20 + sum(dyx) / 30)
    torch.testing.assert_close(chamfer_torch(x, y), torch.tensor(ref), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chamfer_distance(x, y), torch.tensor(ref), atol=1e-5, rtol=1e-5)


def test_poolers_ignore_invalid_slots():
    tokens = torch.randn(2, 4, 8)
    valid = torch.tensor([[True, True, False, False], [True] * 4])
    feats = {"tokens": tokens, "valid": valid, "cls": tokens[:, 0]}
    mean = Pooler(8, "mean")(feats)
    torch.testing.assert_close(mean[0], tokens[0, :2].mean(0))
    att = Pooler(8, "attention")
    changed = dict(feats, tokens=tokens.clone())
    changed["tokens"][0, 2:] = 1e3
    torch.testing.assert_close(att(feats)[0], att(changed)[0])
    assert torch.equal(Pooler(8, "cls")(feats), tokens[:, 0])
    mm = Pooler(8, "max_mean")
    assert mm.out_dim == 16
    torch.testing.assert_close(mm(changed)[0], torch.cat([tokens[0, :2].amax(0), tokens[0, :2].mean(0)]))
    with pytest.raises(ValueError, match="pooler must be one of"):
        Pooler(8, "max")


def test_heads_and_classification_losses():
    x = torch.randn(6, 8)
    assert LinearProbe(8, 3)(x).shape == (6, 3) and MLPHead(8, 2)(x).shape == (6, 2)
    y = torch.tensor([[1, 0], [1, 0], [1, 1], [1, 0]])
    assert pos_weight_from_labels(y).tolist() == [0.0, 3.0]
    logits = torch.tensor([[10.0, -10.0]])
    assert classification_loss(logits, torch.tensor([[1, 0]]), multilabel=True).item() < 1e-3
    assert classification_loss(logits, torch.tensor([0])).item() < 1e-3


def test_survival_loss_prefers_the_right_hazards():
    time_bin, event = torch.tensor([1, 2]), torch.tensor([1, 0])
    good = torch.tensor([[-9.0, 9.0, -9.0], [-9.0, -9.0, -9.0]])
    bad = -good
    assert survival_loss(good, time_bin, event) < 0.01 < survival_loss(bad, time_bin, event)
    assert survival_risk(good)[0] > survival_risk(good)[1]


def test_layer_decay_groups_scale_lr_by_depth():
    from toy import toy_mae

    enc = toy_mae().encoder
    model = torch.nn.ModuleDict({"encoder": enc, "head": torch.nn.Linear(32, 2)})
    groups = layer_decay_groups(model, 1.0, 0.05, 0.5, depth=2)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert lr_of[id(model["head"].weight)] == 1.0
    assert lr_of[id(enc.blocks.blocks[1].attn.qkv.weight)] == 0.5
    assert lr_of[id(enc.blocks.blocks[0].attn.qkv.weight)] == 0.25
    assert lr_of[id(enc.cls_token)] == 0.125 and wd_of[id(enc.cls_token)] == 0.0
    assert wd_of[id(model["head"].bias)] == 0.0 and wd_of[id(model["head"].weight)] == 0.05
    inferred = layer_decay_groups(model, 1.0, 0.05, 0.5)  # depth counted from the encoder's blocks
    assert {id(p): g["lr"] for g in inferred for p in g["params"]} == lr_of


def test_attention_bias_steers_attention_and_keeps_key_padding():
    torch.manual_seed(0)
    t = Transformer(16, 1, 2).eval()
    x = torch.randn(1, 4, 16)
    bias = torch.zeros(1, 1, 4, 4)
    bias[..., 0, 3] = float("-inf")  # token 0 may not look at token 3
    changed = x.clone()
    changed[0, 3] = torch.randn(16)  # (a constant shift would vanish in the layer norm)
    a, b = t(x, bias=bias), t(changed, bias=bias)
    torch.testing.assert_close(a[0, 0], b[0, 0])
    assert not torch.allclose(t(x)[0, 0], t(changed)[0, 0])
    pad = torch.tensor([[False, False, True, False]])
    changed[0, 2] = torch.randn(16)
    torch.testing.assert_close(t(x, pad, bias=bias)[0, 0], t(changed, pad, bias=bias)[0, 0])


def test_first_per_class_keeps_a_fixed_few_label_set():
    from scimae.core.data import first_per_class

    items = [f"t{i}" for i in range(7)]
    assert first_per_class(items, [0, 1, 0, 0, 1, 2, 1], 2) == ["t0", "t1", "t2", "t4", "t5"]


def test_head_width_may_differ_from_the_block_width_and_the_final_norm_has_its_own_eps():
    from scimae.core.transformer import Attention

    torch.manual_seed(0)
    attn = Attention(64, 4, head_dim=64)  # ST-MEM's layout: 4 heads of 64 on a 64-wide block
    assert attn.qkv.weight.shape == (768, 64) and attn.proj.weight.shape == (64, 256)
    x = torch.randn(2, 5, 64)
    q, k, v = (t.reshape(2, 5, 4, 64).transpose(1, 2) for t in attn.qkv(x).split(256, -1))  # [B, H, N, 64]
    w = (q @ k.transpose(-1, -2) / 8).softmax(-1)
    expected = attn.proj((w @ v).transpose(1, 2).reshape(2, 5, 256))
    torch.testing.assert_close(attn(x, None), expected)
    torch.testing.assert_close(attn(x, None, n_out=2), expected[:, 3:])
    net = Transformer(32, 2, 4, eps=1e-5, head_dim=16, norm_eps=1e-6)
    assert net.norm.eps == 1e-6 and net.blocks[0].norm1.eps == 1e-5 and net.blocks[0].attn.proj.in_features == 64


def test_ranking_loss_is_the_pairwise_cross_entropy_of_score_differences():
    # one sample, slots 0 and 1 ranked the wrong way by one unit: each ordered pair costs -log(sigmoid(-1))
    scores, errors = torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 1.0]])
    expected = -math.log(1 / (1 + math.e))
    assert math.isclose(float(ranking_loss(scores, errors, torch.ones(1, 2))), expected, rel_tol=1e-6)
    # a third slot tied with slot 1 in error adds no pair with it; a padding entry adds none at all
    scores3, errors3 = torch.tensor([[0.0, 1.0, 1.0]]), torch.tensor([[2.0, 1.0, 1.0]])
    assert math.isclose(float(ranking_loss(scores3, errors3, torch.ones(1, 3))), expected, rel_tol=1e-6)
    padded = ranking_loss(torch.tensor([[0.0, 1.0, 9.0]]), torch.tensor([[2.0, 1.0, -5.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert math.isclose(float(padded), expected, rel_tol=1e-6)
    right = ranking_loss(torch.tensor([[10.0, 0.0]]), errors, torch.ones(1, 2))
    assert float(right) < 1e-4  # ranked right by a wide margin: next to nothing


def test_gaussian_nll_per_slot_over_used_values():
    from scimae.core.losses import gaussian_nll

    logvar = torch.tensor([[[0.0, math.log(4.0)]]])  # variances 1 and 4
    error = torch.tensor([[[1.0, 2.0]]])
    # 0.5 (0 + 1) and 0.5 (log 4 + 4 / 4), averaged
    assert math.isclose(float(gaussian_nll(logvar, error)), (0.5 + 0.5 * (math.log(4) + 1)) / 2, rel_tol=1e-6)
    only_first = gaussian_nll(logvar, error, torch.tensor([[[True, False]]]))
    assert math.isclose(float(only_first), 0.5, rel_tol=1e-6)
