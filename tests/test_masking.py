import math

import pytest
import torch
from scipy import ndimage

from scimae.core.masking import (STRATEGIES, GroupDirichletMasking, MaskConfig, build_masking, plan_from_scores,
                                 sample_gamma)

GRID = (8, 8)
OPTS = {"block": {"block": 2}, "colored": {"color": "green"}}


def _inputs(B=6, groups=2, seed=0):
    N = groups * math.prod(GRID)
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(B, N, generator=g) > 0.1
    valid[0, math.prod(GRID):] = False  # sample 0 misses its second group
    group = torch.arange(groups).repeat_interleave(math.prod(GRID))[None].expand(B, -1)
    return valid, group


def _hardness(valid, seed=5):
    return torch.rand(valid.shape, generator=torch.Generator().manual_seed(seed))


def _run(name, valid, group, seed=0, ratio=0.75):
    s = build_masking(name, ratio, **OPTS.get(name, {}))
    context = {"hardness": _hardness(valid), "progress": 1.0} if name == "hpm" else {}  # the model's predictions
    return s(valid, torch.Generator().manual_seed(seed), group, GRID, **context)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_visible_count_validity_and_determinism(name):
    valid, group = _inputs()
    plan = _run(name, valid, group)
    expected = [round(0.25 * int(v)) for v in valid.sum(1)]
    assert plan.n_visible.tolist() == expected
    visible = torch.zeros_like(valid).scatter_(1, plan.keep, ~plan.keep_pad)
    assert not (visible & ~valid).any(), "an invalid slot was shown to the encoder"
    assert not (plan.mask & ~valid).any(), "an invalid slot was scored"
    assert torch.equal(visible | plan.mask, valid), "every valid slot is either visible or hidden"
    again = _run(name, valid, group)
    assert torch.equal(plan.mask, again.mask) and torch.equal(plan.keep, again.keep)
    assert not torch.equal(plan.mask, _run(name, valid, group, seed=1).mask)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_open_interval_is_rejected(ratio):
    with pytest.raises(ValueError, match=r"in \(0, 1\), got"):
        build_masking("random", ratio)


def test_unknown_strategy_and_missing_grid():
    with pytest.raises(ValueError, match="unknown masking strategy"):
        build_masking("checkerboard", 0.5)
    valid, group = _inputs()
    with pytest.raises(ValueError, match="needs a token grid"):
        build_masking("block", 0.5)(valid, torch.Generator(), group, None)


def test_plan_pads_keep_for_samples_with_fewer_valid_slots():
    valid = torch.tensor([[True] * 8, [True] * 4 + [False] * 4])
    plan = plan_from_scores(torch.rand(2, 8), valid, 0.5)
    assert plan.keep.shape == (2, 4)
    assert plan.keep_pad.tolist() == [[False] * 4, [False, False, True, True]]


def _hidden_grid(plan, b, block=0):
    n = math.prod(GRID)
    return plan.mask[b, block * n:(block + 1) * n].reshape(GRID).numpy()


def test_block_masks_hide_whole_cubes():
    valid = torch.ones(8, 64, dtype=torch.bool)
    plan = build_masking("block", 0.75, block=2)(valid, torch.Generator().manual_seed(0), None, GRID)
    for b in range(8):
        cubes = _hidden_grid(plan, b).reshape(4, 2, 4, 2).sum((1, 3))  # hidden count per 2x2 cube
        partial = ((cubes > 0) & (cubes < 4)).sum()
        assert partial <= 1, f"sample {b}: {partial} partly hidden cubes"


def test_tube_masks_are_constant_along_time():
    valid = torch.ones(8, 64, dtype=torch.bool)
    plan = build_masking("tube", 0.75)(valid, torch.Generator().manual_seed(0), None, GRID)  # grid = (T, space)
    for b in range(8):
        cols = _hidden_grid(plan, b).sum(0)  # hidden count per spatial column over T
        partial = ((cols > 0) & (cols < GRID[0])).sum()
        assert partial <= 1


def test_shared_masks_hide_the_same_places_in_every_group():
    valid = torch.ones(8, 3 * 64, dtype=torch.bool)
    valid[0, 64:128] = False  # sample 0 misses its second group
    group = torch.arange(3).repeat_interleave(64)[None].expand(8, -1)
    plan = build_masking("shared", 0.75)(valid, torch.Generator().manual_seed(0), group, GRID)
    hidden = plan.mask.reshape(8, 3, 64)
    for b in range(8):
        present = [g for g in range(3) if valid[b, g * 64]]
        # all but at most one place (the one split by the visible count) is hidden in all present groups or none
        split = (hidden[b, present].float().mean(0) % 1 != 0).sum()
        assert split <= 1, split
    assert torch.equal(hidden[1, 0], hidden[1, 2]) and not torch.equal(hidden[1, 0], hidden[2, 0])


def _mean_region_size(plans, n=32):
    sizes = []
    for plan in plans:
        for b in range(plan.mask.shape[0]):
            labels, k = ndimage.label(plan.mask[b].reshape(n, n).numpy())
            sizes.append(plan.mask[b].sum().item() / max(k, 1))
    return sum(sizes) / len(sizes)


def test_colored_noise_region_sizes_follow_the_color():
    valid = torch.ones(4, 32 * 32, dtype=torch.bool)

    def plans(name, **opt):
        return [build_masking(name, 0.5, **opt)(valid, torch.Generator().manual_seed(s), None, (32, 32)) for s in range(3)]

    random = _mean_region_size(plans("random"))
    red = _mean_region_size(plans("colored", color="red", sigma=1.5))
    blue = _mean_region_size(plans("colored", color="blue", sigma=1.5))
    assert red > 2 * random, (red, random)
    assert blue < random, (blue, random)
    for color in ("green", "purple"):
        p = plans("colored", color=color)[0]
        assert p.n_visible.tolist() == [512] * 4


def test_colored_noise_works_in_1d_and_3d():
    for grid in [(64,), (4, 4, 4)]:
        valid = torch.ones(2, 64, dtype=torch.bool)
        plan = build_masking("colored", 0.75, color="red")(valid, torch.Generator().manual_seed(0), None, grid)
        assert plan.n_visible.tolist() == [16, 16]


def test_dirichlet_budgets_sum_to_visible_count_and_follow_alpha():
    valid, group = _inputs(B=64, groups=4)
    valid[:] = True

    def kept_per_group(alpha):
        s = GroupDirichletMasking(0.75, alpha=alpha)
        shares = s.shares(valid, torch.Generator().manual_seed(0), group)
        torch.testing.assert_close(shares.sum(1), torch.ones(64, dtype=shares.dtype))
        plan = s(valid, torch.Generator().manual_seed(0), group, GRID)
        kept = torch.zeros(64, 4).scatter_add_(1, group.gather(1, plan.keep), (~plan.keep_pad).float())
        assert kept.sum(1).tolist() == [64.0] * 64  # budgets add up to the visible count
        return kept

    skewed, even = kept_per_group(0.1), kept_per_group(100.0)
    assert (skewed.max(1).values > 48).float().mean() > 0.5  # one group takes most of the budget
    assert (even - 16).abs().max() <= 6


def test_dirichlet_gives_no_budget_to_a_missing_group():
    valid, group = _inputs(B=16)
    plan = GroupDirichletMasking(0.5)(valid, torch.Generator().manual_seed(0), group, GRID)
    assert not (group[0].gather(0, plan.keep[0][~plan.keep_pad[0]]) == 1).any()


def test_group_independent_masks_each_group_at_the_ratio():
    valid = torch.ones(4, 3 * 64, dtype=torch.bool)
    group = torch.arange(3).repeat_interleave(64)[None].expand(4, -1)
    plan = build_masking("group_independent", 0.75)(valid, torch.Generator().manual_seed(0), group, GRID)
    kept = torch.zeros(4, 3).scatter_add_(1, group.gather(1, plan.keep), (~plan.keep_pad).float())
    assert kept.tolist() == [[16.0, 16.0, 16.0]] * 4


def test_gamma_sampler_moments():
    for alpha in (0.3, 2.0):
        x = sample_gamma(torch.full((20000,), alpha), torch.Generator().manual_seed(0))
        assert abs(x.mean().item() - alpha) < 0.05 * max(alpha, 1)
        assert abs(x.var().item() - alpha) < 0.1 * max(alpha, 1)


def test_block_masking_of_point_groups_hides_a_contiguous_region():
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(4, 64, 3, generator=g)  # [B, N, 3] group centres
    valid = torch.ones(4, 64, dtype=torch.bool)
    valid[0, :8] = False
    plan = build_masking("block", 0.6)(valid, torch.Generator().manual_seed(1), None, None, coords)
    assert (plan.mask.sum(1) == torch.round(0.6 * valid.sum(1).double()).long()).all() and not plan.mask[0, :8].any()
    for b in range(4):  # some valid slot has every hidden slot nearer to it than every shown one
        d = torch.cdist(coords[b], coords[b])  # [N, N]
        hidden, shown = plan.mask[b], valid[b] & ~plan.mask[b]
        ball = d[:, hidden].max(1).values <= d[:, shown].min(1).values  # [N]
        assert (ball & valid[b]).any()
    random = build_masking("random", 0.6)(valid, torch.Generator().manual_seed(1))
    d = torch.cdist(coords[1], coords[1])
    assert not (d[:, random.mask[1]].max(1).values <= d[:, ~random.mask[1]].min(1).values).any()
    with pytest.raises(ValueError, match="needs a token grid"):
        build_masking("block", 0.6)(valid, g, None, None)


def test_the_visible_count_rounds_or_truncates_as_asked():
    valid = torch.ones(1, 14, dtype=torch.bool)
    scores = torch.arange(14.0)[None]
    assert int(plan_from_scores(scores, valid, 0.75).n_visible) == 4  # round(3.5)
    assert int(plan_from_scores(scores, valid, 0.75, "floor").n_visible) == 3  # MAE's int(14 x 0.25)
    assert build_masking("random", 0.75, count="floor")(valid, torch.Generator().manual_seed(0)).n_visible.item() == 3


def test_group_floor_keeps_int_n_times_the_share_in_every_group_lead_by_lead():
    from scimae.core.masking import show_fixed

    # two groups of 5 slots and one of 3 (slot 12 invalid); scores chosen by hand
    group = torch.tensor([[0] * 5 + [1] * 5 + [2] * 4])
    valid = torch.ones(1, 14, dtype=torch.bool)
    valid[0, 13] = False
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.0, 0.6, 0.4, 0.05, 0.5, 0.9, 0.0]])
    plan = plan_from_scores(scores, valid, 0.6, "group_floor", group)  # int(5 x 0.4) = 2, int(3 x 0.4) = 1
    assert plan.keep.tolist() == [[1, 3, 7, 5, 10]]  # group by group, each in ascending score
    assert plan.mask.sum() == 8 and not plan.mask[0, 13]
    with pytest.raises(ValueError, match="needs group ids"):
        plan_from_scores(scores, valid, 0.6, "group_floor")
    fixed = torch.zeros(1, 14, dtype=torch.bool)
    fixed[0, [0, 9]] = True  # always shown: first in keep, never hidden
    shown = show_fixed(plan_from_scores(scores, valid & ~fixed, 0.6, "group_floor", group), fixed)
    assert shown.keep.tolist() == [[0, 9, 1, 7, 10]] and not shown.mask[0, [0, 9]].any()  # int(4 x 0.4) = 1 left
    assert build_masking("random", 0.6, count="group_floor")(valid, torch.Generator(), group).n_visible.item() == 5


def test_hpm_hides_the_hardest_predicted_share_growing_over_training():
    valid, group = _inputs()
    hardness = _hardness(valid)
    hpm = build_masking("hpm", 0.75, hard=[0.0, 0.5])
    hidden_hardness = []
    for progress, share in ((0.0, 0.0), (0.5, 0.25), (1.0, 0.5)):
        plan = hpm(valid, torch.Generator().manual_seed(0), group, GRID, hardness=hardness, progress=progress)
        assert plan.n_visible.tolist() == [round(0.25 * int(v)) for v in valid.sum(1)]
        assert not (plan.mask & ~valid).any()
        for b in range(len(valid)):
            n_hard = int(share * 0.75 * int(valid[b].sum()))
            hardest = hardness[b].masked_fill(~valid[b], -1).topk(n_hard).indices
            assert plan.mask[b, hardest].all() and valid[b, hardest].all()
        hidden_hardness.append(float(hardness[plan.mask].mean()))
    assert hidden_hardness[0] < hidden_hardness[1] < hidden_hardness[2]  # easy to hard
    # all hard: the int(0.75 n) hardest valid slots are hidden (round(0.75 n) hidden in all); group_floor still
    # keeps its share in every group
    plan = build_masking("hpm", 0.75, hard=[1.0, 1.0])(valid, torch.Generator(), group, GRID, hardness=hardness)
    for b in range(len(valid)):
        hardest = hardness[b].masked_fill(~valid[b], -1).topk(int(0.75 * int(valid[b].sum()))).indices
        assert plan.mask[b, hardest].all() and int(plan.mask[b].sum()) <= len(hardest) + 1
    per_group = build_masking("hpm", 0.75, count="group_floor", hard=[1.0, 1.0])(
        valid, torch.Generator(), group, GRID, hardness=hardness)
    kept = torch.zeros_like(valid).scatter_(1, per_group.keep, ~per_group.keep_pad)
    for g in (0, 1):
        in_g = valid & (group == g)
        assert ((kept & in_g).sum(1) == torch.floor(in_g.sum(1) * 0.25).long()).all()
    with pytest.raises(ValueError, match="predicted loss"):
        hpm(valid, torch.Generator(), group, GRID)
    with pytest.raises(ValueError, match=r"model.mask.hard must be \[start, end\]"):
        MaskConfig(strategy="hpm", hard=[0.0, 1.5])
