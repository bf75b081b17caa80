"""Masked frequency modelling: the hidden band, the corrupted input and the spectral loss against a hand-computed
case, and a model trained on it through the config."""
import math

import pytest
import torch

from scimae.core.frequency import FrequencyMasking, radius


def test_radius_is_the_normalised_frequency_of_each_bin():
    torch.testing.assert_close(radius((4,)), torch.tensor([0.0, 0.5, 1.0, 0.5]))
    r = radius((8, 8))
    assert r[0, 0] == 0 and r[4, 4] == 1 and math.isclose(float(r[0, 4]), math.sqrt(0.5), rel_tol=1e-6)


def test_hiding_the_high_band_of_two_sinusoids_leaves_the_low_one_and_costs_its_power():
    """x = sin(2 pi 2 t / 32) + sin(2 pi 12 t / 32): bins 2 and 12 lie at radius 0.125 and 0.75. Hiding radius >= 0.5
    leaves the first sinusoid exactly; predicting that costs the hidden one's mean power, 0.5; the truth costs 0."""
    t = torch.arange(32, dtype=torch.float64)
    low, high = torch.sin(2 * math.pi * 2 * t / 32), torch.sin(2 * math.pi * 12 * t / 32)
    x = (low + high)[None, None, None]  # [B, G, C, T]
    hidden = (radius((32,)) >= 0.5)[None]  # [B, T]
    shown = FrequencyMasking.corrupt(x, hidden)
    torch.testing.assert_close(shown[0, 0, 0], low)
    weight = torch.ones(1, 1, 1)
    assert math.isclose(float(FrequencyMasking.loss(shown, x, hidden, weight)), 0.5, rel_tol=1e-9)
    assert float(FrequencyMasking.loss(x, x, hidden, weight)) < 1e-20
    assert float(FrequencyMasking.loss(shown, x, ~hidden, weight)) < 1e-20  # the shown band was right
    # an absent channel does not count
    two = torch.cat([x, torch.zeros_like(x)], 1)
    pred = torch.cat([shown, torch.randn_like(x)], 1)
    assert math.isclose(float(FrequencyMasking.loss(pred, two, hidden, torch.tensor([[[1.0], [0.0]]]))), 0.5,
                        rel_tol=1e-9)


def test_bands_are_drawn_per_sample_inside_the_range():
    m = FrequencyMasking(0.2, 0.3)
    hidden = m.hidden(64, (16, 16), torch.Generator().manual_seed(0))
    r = radius((16, 16))
    for h in hidden:  # a disc or its complement, its edge within [0.2, 0.3)
        inside = h[r < 0.2].all() and not h[r >= 0.3].any()
        outside = not h[r < 0.2].any() and h[r >= 0.3].all()
        assert inside or outside
    assert 0 < sum(bool(h[0, 0]) for h in hidden) < 64  # both kinds occur
    with pytest.raises(ValueError, match="radius range"):
        FrequencyMasking(0.5, 0.2)


@pytest.mark.parametrize("mode", ["drop", "mask_token"])
def test_a_cardiac_model_trains_on_the_frequency_target(mode):
    from scimae.domains.cardiac.model import CardiacModelConfig, build_cardiac_mae

    torch.manual_seed(0)
    cfg = CardiacModelConfig(dim=32, depth=2, heads=4, decoder_dim=16, decoder_depth=1, decoder_heads=2,
                             target="frequency", mode=mode)
    mae = build_cardiac_mae(cfg, 500, 50)
    present = torch.ones(4, 13, dtype=torch.bool)
    present[:, 12] = False  # no PPG
    batch = {"image": torch.randn(4, 13, 1, 500) * present[:, :, None, None], "present": present}
    opt = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = mae(batch, torch.Generator().manual_seed(0))  # the same band each step
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.7 * losses[0]
    assert out["pred"].shape[1] == 12 * 10  # every valid slot is predicted
    from scimae.core.engine import mae_validation
    from scimae.core.mae import figure_panels

    loss, original, masked, recon = figure_panels(mae, batch)  # the input the encoder saw, and the prediction
    assert original.shape == recon.shape == (13, 500) and torch.isfinite(recon[:12]).all()
    assert set(mae_validation(mae, [batch])) == {"val_loss"}
    with pytest.raises(ValueError, match="norm_pix does not apply"):
        CardiacModelConfig(target="frequency", norm_pix=True)
    with pytest.raises(ValueError, match="frequency_radius must be"):
        CardiacModelConfig(target="frequency", frequency_radius=[0.1, 0.2, 0.3])
