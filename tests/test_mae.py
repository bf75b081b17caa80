import pytest
import torch

from conftest import collate
from toy import ToyImages, toy_mae


def _batch(n=8, **kw):
    ds = ToyImages(n, **kw)
    return collate([ds[i] for i in range(n)])


@pytest.mark.parametrize("mode", ["drop", "mask_token"])
def test_loss_falls_on_toy_data(mode):
    torch.manual_seed(0)
    model = toy_mae(mode)
    ds = ToyImages(64)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(80):
        idx = torch.randint(0, 64, (16,), generator=g)
        out = model(collate([ds[int(i)] for i in idx]), g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize("mode", ["drop", "mask_token"])
def test_hidden_values_never_reach_the_prediction(mode):
    model = toy_mae(mode).eval()
    batch = _batch()
    out = model(batch, torch.Generator().manual_seed(3))
    plan = out["plan"]
    # overwrite every hidden patch's pixels: the prediction must not change
    ts = out["tokenset"]
    noisy_target = ts.target.masked_fill(plan.mask[..., None], 50.0)
    image = model.encoder.tokenizer.unpatchify(noisy_target)
    out2 = model(dict(batch, image=image), torch.Generator().manual_seed(3))
    assert torch.equal(out2["plan"].mask, plan.mask)
    torch.testing.assert_close(out2["pred"], out["pred"])


@pytest.mark.parametrize("mode", ["drop", "mask_token"])
def test_group_heads_predict_each_group_with_its_own_map(mode):
    torch.manual_seed(0)
    model = toy_mae(mode, group_heads=True).eval()
    batch = _batch()
    out = model(batch, torch.Generator().manual_seed(0))
    group = out["tokenset"].group.gather(1, out["pred_idx"])  # [B, M]
    assert (group == 0).any() and (group == 1).any()
    with torch.no_grad():
        model.decoder_pred.weight[1].zero_()
        model.decoder_pred.bias[1].fill_(5.0)
    again = model(batch, torch.Generator().manual_seed(0))
    assert (again["pred"][group == 1] == 5).all()
    torch.testing.assert_close(again["pred"][group == 0], out["pred"][group == 0])


def test_losses_cover_hidden_valid_slots_only_and_per_group():
    model = toy_mae()
    out = model(_batch(missing_every=2), torch.Generator().manual_seed(0))
    assert set(out) >= {"loss", "loss/a", "loss/b", "pred", "plan"}
    hidden = out["plan"].mask.sum(1)
    assert torch.equal((~out["pred_pad"]).sum(1), hidden)
    picked = out["plan"].mask.gather(1, out["pred_idx"])
    assert picked[~out["pred_pad"]].all()


def test_decoder_masking_decodes_a_fraction_of_hidden_slots():
    model = toy_mae(decoder_mask_ratio=0.5)
    batch = _batch()
    out = model.train()(batch, torch.Generator().manual_seed(0))
    hidden = out["plan"].mask.sum(1)
    assert torch.equal((~out["pred_pad"]).sum(1), torch.round(hidden * 0.5).long())
    out = model.eval()(batch, torch.Generator().manual_seed(0))
    assert torch.equal((~out["pred_pad"]).sum(1), out["plan"].mask.sum(1))
    with pytest.raises(ValueError, match="decoder_mask_ratio"):
        toy_mae(decoder_mask_ratio=1.0)


def test_encode_a_subset_of_groups_ignores_the_rest():
    model = toy_mae().eval()
    batch = _batch()
    feats = model.encode(batch, groups=["a"])
    other = dict(batch, image=batch["image"].clone())
    other["image"][:, 1] = torch.randn_like(other["image"][:, 1])
    feats2 = model.encode(other, groups=["a"])
    torch.testing.assert_close(feats["cls"], feats2["cls"])
    assert feats["valid"][:, 16:].sum() == 0 and feats["tokens"][:, 16:].abs().sum() == 0
    assert not torch.allclose(model.encoder(batch)["cls"], feats["cls"])
    with pytest.raises(ValueError, match="unknown groups"):
        model.encoder(batch, groups=["c"])
    feats = model.encode(batch, return_layers=(1, 2))
    assert len(feats["layers"]) == 2 and feats["layers"][0].shape == (8, 32, 32)


def test_fill_predicts_every_slot_of_a_missing_group():
    model = toy_mae().eval()
    batch = _batch(missing_every=1)  # group b absent everywhere
    out = model.fill(batch, ["b"])
    assert out["pred"].shape == (8, 16, 16)
    assert (out["pred_idx"] >= 16).all()


def test_fill_from_part_of_the_context_and_the_spread_of_such_fills():
    """``fill`` with ``context`` sees only those slots (all of them: the plain fill); ``fill_spread`` is the spread
    over fills from random parts of the context, zero outside the wanted group and repeatable with a generator."""
    model = toy_mae().eval()
    batch = _batch(missing_every=1)  # group b absent: synthesised from group a's 16 slots
    plain = model.fill(batch, ["b"])
    everything = model.fill(batch, ["b"], torch.ones(8, 32, dtype=torch.bool))
    torch.testing.assert_close(everything["pred"], plain["pred"])
    half = torch.arange(32)[None].expand(8, -1) % 2 == 0  # every other slot of the context
    assert not torch.allclose(model.fill(batch, ["b"], half)["pred"], plain["pred"])
    spread = model.fill_spread(batch, ["b"], draws=4, generator=torch.Generator().manual_seed(0))
    assert spread.shape == (8, 32, 16) and (spread[:, :16] == 0).all() and (spread[:, 16:] > 0).all()
    again = model.fill_spread(batch, ["b"], draws=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, spread)
    assert (model.fill_spread(batch, ["b"], draws=4, drop=0.0) == 0).all()  # the same context every time


def test_reconstruction_puts_predictions_in_hidden_slots_only():
    model = toy_mae().eval()
    batch = _batch(missing_every=2)
    out = model(batch, torch.Generator().manual_seed(0))
    original, masked, recon = model.reconstruction(out)
    plan, valid = out["plan"], out["tokenset"].valid
    visible = valid & ~plan.mask
    assert torch.equal(recon[visible], original[visible])
    assert torch.isnan(masked[plan.mask]).all() and not torch.isnan(masked[visible]).any()
    assert torch.isnan(recon[~valid]).all()
    assert not torch.isnan(recon[plan.mask]).any()
    assert not torch.allclose(recon[plan.mask], original[plan.mask])


def test_gather_slots_matches_gather_and_passes_gradients():
    from scimae.core.tokens import gather_slots

    torch.manual_seed(0)
    x = torch.randn(3, 7, 5, 2, requires_grad=True)
    idx = torch.stack([torch.randperm(7)[:4] for _ in range(3)])  # [3, 4]
    ref = x.gather(1, idx[..., None, None].expand(-1, -1, 5, 2))
    out = gather_slots(x, idx)
    assert torch.equal(out, ref)
    shared = torch.randn(1, 7, 5)  # one table for the whole batch (positions)
    assert torch.equal(gather_slots(shared, idx), shared.expand(3, -1, -1).gather(1, idx[..., None].expand(-1, -1, 5)))
    assert torch.equal(gather_slots(x[:, :, :, 0], idx), ref[..., 0])  # a non-contiguous view
    out.sum().backward()
    counts = torch.zeros(3, 7).scatter_add_(1, idx, torch.ones(3, 4))
    assert torch.equal(x.grad[..., 0, 0], counts)


def test_the_encoder_takes_only_a_tokenizer_of_its_width():
    from scimae.core.embed import GridTokenizer
    from scimae.core.mae import MAEEncoder

    with pytest.raises(TypeError, match="not a Tokenizer"):
        MAEEncoder(torch.nn.Linear(4, 4), 16, depth=1, heads=2)  # no group_names
    with pytest.raises(ValueError, match="embeds to 16, the encoder expects 32"):
        MAEEncoder(GridTokenizer(["a"], (8, 8), (4, 4), 16), 32, depth=1, heads=2)


def test_tokenset_checks_the_shape_of_its_optional_slot_fields():
    from scimae.core.tokens import TokenSet

    args = {"tokens": torch.zeros(2, 3, 4), "group": torch.zeros(2, 3, dtype=torch.long),
            "valid": torch.ones(2, 3, dtype=torch.bool), "pos": torch.zeros(1, 3, 4)}
    TokenSet(**args, unit=torch.zeros(2, 3, dtype=torch.long), salience=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"TokenSet.unit: expected shape \(2, 3\)"):
        TokenSet(**args, unit=torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("mode", ["drop", "mask_token"])
def test_without_a_cls_token_no_slot_reads_the_cls_slot(mode):
    from toy import GROUPS
    from scimae.core.embed import GridTokenizer
    from scimae.core.losses import PatchTarget
    from scimae.core.mae import MAEEncoder, MaskedAutoencoder
    from scimae.core.masking import build_masking

    def predictions(cls_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        tok = GridTokenizer(GROUPS, (16, 16), (4, 4), 32)
        enc = MAEEncoder(tok, 32, 2, 4, mask_token=mode == "mask_token", cls_token=cls_token, pos_every_block=True)
        mae = MaskedAutoencoder(enc, build_masking("random", 0.75), PatchTarget(), tok.patch_values, 32, 1, 4,
                                mode=mode).eval()
        batch = _batch()
        before = mae(batch, torch.Generator().manual_seed(1))["pred"]
        with torch.no_grad():
            enc.cls_token.add_(1.0)
        return before, mae(batch, torch.Generator().manual_seed(1))["pred"]

    before, after = predictions(cls_token=False)
    torch.testing.assert_close(after, before, atol=0, rtol=0)  # Point-MAE's layout: the cls slot is read by none
    before, after = predictions(cls_token=True)
    assert not torch.allclose(after, before)


@pytest.mark.parametrize("mode", ["drop", "mask_token"])
def test_group_decoder_attention_predicts_each_group_from_its_own_slots(mode):
    from toy import GROUPS
    from scimae.core.embed import GridTokenizer
    from scimae.core.losses import PatchTarget
    from scimae.core.mae import MAEEncoder, MaskedAutoencoder
    from scimae.core.masking import build_masking

    def predictions(attention: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        tok = GridTokenizer(GROUPS, (16, 16), (4, 4), 32)
        enc = MAEEncoder(tok, 32, 0, 4, mask_token=mode == "mask_token")  # no blocks: a latent is its own patch's
        mae = MaskedAutoencoder(enc, build_masking("random", 0.5), PatchTarget(), tok.patch_values, 32, 2, 4,
                                mode=mode, decoder_attention=attention).eval()
        batch = _batch()
        out = mae(batch, torch.Generator().manual_seed(1))
        image = batch["image"].clone()
        image[:, 1] += torch.randn_like(image[:, 1])  # group b's pixels change, hidden or visible
        again = mae(dict(batch, image=image), torch.Generator().manual_seed(1))
        return out["pred"], again["pred"], out["tokenset"].group.gather(1, out["pred_idx"])

    before, after, group = predictions("group")
    torch.testing.assert_close(after[group == 0], before[group == 0], atol=0, rtol=0)
    assert not torch.allclose(after[group == 1], before[group == 1])
    before, after, group = predictions("all")
    assert not torch.allclose(after[group == 0], before[group == 0])


def _noisy_quadrant(n, g):
    """Toy images whose top-left quadrant in group a and bottom-right one in group b are noise: unpredictable slots."""
    ds = ToyImages(n, seed=int(torch.randint(0, 1000, (1,), generator=g)))
    batch = collate([ds[i] for i in range(n)])
    noisy = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    noisy[0, :, :8, :8] = noisy[1, :, 8:, 8:] = True
    batch["image"] = torch.where(noisy, torch.randn(n, 2, 1, 16, 16, generator=g), batch["image"])
    return batch


def _train(model, make_batch, steps: int):
    """``steps`` AdamW steps (lr 3e-3) on batches of 16 from ``make_batch(n, generator)``, with the Trainer's progress."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        model.progress = step / steps
        out = model(make_batch(16, g), g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return out


def test_hpm_learns_to_rank_slots_by_their_reconstruction_loss():
    """Where a quadrant of each group is noise, the loss predictor ranks the hidden slots as their true errors rank them,
    and the masking then hides the noisy slots first."""
    from scipy.stats import spearmanr

    torch.manual_seed(0)
    model = toy_mae(strategy="hpm")
    out = _train(model, _noisy_quadrant, 120)
    assert "loss/hardness" in out and out["hardness"].shape == out["pred_idx"].shape
    model.eval()
    batch = _noisy_quadrant(32, torch.Generator().manual_seed(1))
    out = model(batch, torch.Generator().manual_seed(2))
    keep = ~out["pred_pad"]
    rho = spearmanr(out["hardness"][keep].detach(), out["errors"][keep].detach()).statistic
    assert rho > 0.4, rho
    model.progress = 1.0  # half the hidden slots chosen by predicted loss: noisy slots are hidden more often
    noisy = out["tokenset"].target.std(-1) > 0.5  # [B, N]: the noise quadrant's patches
    share = [float(model(batch, torch.Generator().manual_seed(2))["plan"].mask[noisy].float().mean())]
    model.progress = 0.0
    share.append(float(model(batch, torch.Generator().manual_seed(2))["plan"].mask[noisy].float().mean()))
    assert share[0] > share[1] + 0.1, share


def test_the_loss_predictor_is_trained_by_its_ranking_term_alone():
    """HPM's loss predictor reads the encoder's output detached: its ranking term reaches its own weights only, and
    the reconstruction loss does not reach them."""
    torch.manual_seed(0)
    model = toy_mae(strategy="hpm")
    out = model(_noisy_quadrant(8, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(0))
    out["loss/hardness"].backward(retain_graph=True)
    moved = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved == {n for n, _ in model.named_parameters() if n.startswith("hardness.")}, moved
    model.zero_grad()
    (out["loss"] - out["loss/hardness"]).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.hardness.parameters())


def _texture(n, g):
    """Group b is -0.5 x group a value by value, and a is white noise: no patch token carries b, the place does."""
    a = torch.randn(n, 1, 1, 16, 16, generator=g)
    return {"image": torch.cat([a, -0.5 * a], 1), "present": torch.ones(n, 2, dtype=torch.bool)}


def test_the_colocated_mix_adds_the_shown_patches_at_the_same_place_and_never_a_hidden_one():
    torch.manual_seed(0)
    model = toy_mae(colocated=True).eval()
    batch = _texture(4, torch.Generator().manual_seed(0))
    plain = model.fill(batch, ["b"])
    model.colocated.bias.data = torch.tensor([2.0, 5.0])  # weight 2 for group a's patch, 5 for b's own (hidden)
    mixed = model.fill(batch, ["b"])
    a = mixed["tokenset"].target[:, :16]  # [B, 16, P]: group a's patches, b's slots are 16 + the same place
    place = (mixed["pred_idx"] % 16)[..., None].expand_as(mixed["pred"])  # [B, M, P]
    torch.testing.assert_close(mixed["pred"] - plain["pred"], 2.0 * a.gather(1, place))
    changed = dict(batch, image=batch["image"].clone())
    changed["image"][:, 1] += 1.0  # b is hidden: its values never enter the prediction
    torch.testing.assert_close(model.fill(changed, ["b"])["pred"], mixed["pred"])


def test_the_colocated_mix_synthesises_a_group_that_only_the_same_place_predicts():
    losses = {}
    for colocated in (False, True):
        torch.manual_seed(0)
        model = toy_mae(colocated=colocated)
        _train(model, _texture, 60)
        losses[colocated] = float(model.eval().fill(_texture(16, torch.Generator().manual_seed(1)), ["b"])["loss"])
    assert losses[False] > 0.2 and losses[True] < 0.02, losses  # b's variance is 0.25


def test_the_uncertainty_head_learns_where_values_are_noise_without_moving_the_prediction():
    """model.uncertainty: a log-variance per predicted value, read from the detached decoder output and trained on
    the detached error (the model's other gradients are unchanged); the spread of fills adds its variance, so the
    noisy quadrants come out least sure."""
    torch.manual_seed(0)
    model = toy_mae(uncertainty=True, group_heads=True)
    batch = _noisy_quadrant(8, torch.Generator().manual_seed(3))
    out = model(batch, torch.Generator().manual_seed(0))
    grads = torch.autograd.grad(out["loss/uncertainty"], [model.decoder_pred.weight, *model.encoder.parameters(),
                                                          *model.decoder.parameters()], allow_unused=True)
    assert all(g is None for g in grads)  # the likelihood term moves neither the prediction nor the features
    _train(model, _noisy_quadrant, 120)
    model.eval()
    test = _noisy_quadrant(8, torch.Generator().manual_seed(1))
    test["present"][:, 1] = False  # group b synthesised from group a
    spread = model.fill_spread(test, ["b"], draws=4, generator=torch.Generator().manual_seed(0))  # [B, N, P]
    noisy = torch.zeros(4, 4, dtype=torch.bool)
    noisy[2:, 2:] = True  # group b's noisy quadrant, in its 4 x 4 grid of slots
    per_slot = spread[:, 16:].mean((0, 2)).reshape(4, 4)
    assert per_slot[noisy].min() > per_slot[~noisy].max(), per_slot
    # with the same context every time the fills agree: what is left is the predicted standard deviation
    still = model.fill_spread(test, ["b"], draws=2, drop=0.0)
    fill = model.fill(test, ["b"])
    expected = torch.zeros_like(still).scatter(1, fill["pred_idx"][..., None].expand_as(fill["logvar"]),
                                               (fill["logvar"] / 2).exp())
    torch.testing.assert_close(still, expected)


def _heteroscedastic(n, g):
    """Group b is -0.5 x group a plus noise of standard deviation 0.5 |a|, value by value: how sure b's synthesis
    can be is a matter of the value at the same place."""
    a = torch.randn(n, 1, 1, 16, 16, generator=g)
    noise = torch.randn(n, 1, 1, 16, 16, generator=g)
    return {"image": torch.cat([a, -0.5 * a + 0.5 * a.abs() * noise], 1), "present": torch.ones(n, 2, dtype=torch.bool)}


def test_with_the_colocated_mix_the_predicted_variance_follows_the_values_at_the_same_place():
    """model.colocated with model.uncertainty: the log-variance adds a decoder-weighted mix of the co-located shown
    values and their squares, so it can vary value by value inside a patch, as the noise does here; a patch token
    alone cannot. The term starts at 0 and is trained by the likelihood alone."""
    from scipy.stats import spearmanr

    rho = {}
    for colocated in (False, True):
        torch.manual_seed(0)
        model = toy_mae(uncertainty=True, colocated=colocated)
        if colocated:
            assert not model.colocated_logvar.weight.any() and not model.colocated_logvar.bias.any()
        _train(model, _heteroscedastic, 120)
        test = _heteroscedastic(8, torch.Generator().manual_seed(1))
        out = model.eval().fill(test, ["b"])
        a = out["tokenset"].target[:, :16]  # [B, 16, P]: group a's patches at b's places
        a = a.gather(1, (out["pred_idx"] % 16)[..., None].expand_as(out["logvar"]))  # [B, M, P]
        rho[colocated] = spearmanr(out["logvar"].flatten(), a.abs().flatten()).statistic
    assert rho[True] > 0.6 and rho[False] < 0.3, rho


def test_the_uncertainty_head_needs_values_per_slot():
    from scimae.domains.scene3d.model import PointModelConfig, build_point_mae

    with pytest.raises(ValueError, match="model.uncertainty needs a patch target"):
        build_point_mae(PointModelConfig(dim=32, depth=1, heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2,
                                         uncertainty=True), 8, 8)


@pytest.mark.parametrize("conflict", [{"norm_pix": True}, {"target": "frequency"}])
def test_the_colocated_mix_refuses_targets_it_cannot_add_values_to(conflict):
    from scimae.core.mae import MAEConfig

    with pytest.raises(ValueError, match="model.colocated"):
        MAEConfig(colocated=True, **conflict)
