"""The papers' building blocks, each with a property a wrong implementation would fail.

SA-UNet: the scale cascade is linear, has N = 4 outputs at growing receptive fields, and is followed by ECA.
RAGCM: RPA pools to 3, 7, 11 with reduction 4, row-softmax attention, concatenation with X; APF fuses three
levels with a channel gate and a residual add. (BPMSegNet's SLCF, SAG and FPN are in test_models_bpmsegnet.py.)
"""

import pytest
import torch
import torch.nn.functional as F

from NerveSegLogic.models.blocks import ECA, eca_kernel_size
from NerveSegLogic.models.ragcm import AdaptivePyramidFusion, RegionPyramidAggregation, adaptive_avg_pool
from NerveSegLogic.models.sa_unet import ScaleAttentionalConv, ScaleCascade

torch.set_num_threads(2)


# ------------------------------------------------------------------------------------------------------------ ECA
def test_eca_is_a_k_wide_1d_conv_over_pooled_channels():
    torch.manual_seed(0)
    eca = ECA(16, kernel_size=3)
    x = torch.rand(2, 16, 5, 5)
    pooled = x.mean(dim=(2, 3))
    weight = eca.conv.weight.view(3)
    padded = F.pad(pooled, (1, 1))
    expected_gate = torch.sigmoid(sum(weight[i] * padded[:, i:i + 16] for i in range(3)))
    assert torch.allclose(eca(x), x * expected_gate[:, :, None, None], atol=1e-6)
    assert eca_kernel_size(16) == 3 and eca_kernel_size(512) == 5 and eca_kernel_size(64) == 3


def test_eca_gate_of_one_channel_depends_only_on_its_k_neighbours():
    torch.manual_seed(0)
    eca = ECA(32, kernel_size=3)
    x = torch.rand(1, 32, 4, 4)
    y = x.clone()
    y[:, 20] += 5.0  # changes channel 20's pooled value: gates 19..21 may change, channel 5's may not
    assert torch.equal(eca.gate(x)[:, 5], eca.gate(y)[:, 5])
    assert not torch.equal(eca.gate(x)[:, 21], eca.gate(y)[:, 21])


# ---------------------------------------------------------------------------------------- scale-attentional conv
def test_scale_cascade_is_linear_before_the_gate():
    torch.manual_seed(0)
    cascade = ScaleCascade(8, 16, scales=4)
    x, y = torch.randn(2, 8, 12, 12), torch.randn(2, 8, 12, 12)
    a, b = 1.7, -0.6
    assert torch.allclose(cascade(a * x + b * y), a * cascade(x) + b * cascade(y), atol=1e-5)


def test_scale_cascade_has_four_outputs_with_growing_receptive_fields():
    cascade = ScaleCascade(1, 16, scales=4)
    assert cascade.first.kernel_size == (1, 1)
    assert len(cascade.rest) == 3
    for step in cascade.rest:  # depthwise 3x3 (groups = channels) then pointwise 1x1
        depthwise, pointwise = step[0], step[1]
        assert depthwise.kernel_size == (3, 3) and depthwise.groups == depthwise.in_channels == 4
        assert pointwise.kernel_size == (1, 1)
    with torch.no_grad():
        for p in cascade.parameters():
            p.fill_(1.0)
        impulse = torch.zeros(1, 1, 15, 15)
        impulse[0, 0, 7, 7] = 1.0
        out = cascade(impulse)
    assert out.shape == (1, 16, 15, 15)
    # F_k (channels 4(k-1)..4k-1) sees a (2k-1)x(2k-1) neighbourhood: 1, 3, 5, 7 pixels wide
    for k in range(4):
        support = (out[0, 4 * k].abs() > 0).nonzero()
        width = int(support[:, 1].max() - support[:, 1].min()) + 1
        assert width == 2 * k + 1


def test_scale_attentional_conv_is_the_cascade_gated_by_eca():
    torch.manual_seed(0)
    conv = ScaleAttentionalConv(8, 16)
    x = torch.randn(2, 8, 10, 10)
    features = conv.cascade(x)
    assert torch.allclose(conv(x), conv.attention(features), atol=1e-6)
    gate = conv.attention.gate(features)
    assert ((gate > 0) & (gate < 1)).all()
    # the gate makes the whole block non-linear (it is the only non-linearity)
    assert not torch.allclose(conv(2 * x), 2 * conv(x), atol=1e-4)


def test_scale_cascade_refuses_widths_not_divisible_by_the_scales():
    with pytest.raises(ValueError, match="divisible"):
        ScaleCascade(8, 18, scales=4)


# --------------------------------------------------------------------------------------------------------- RPA
@pytest.mark.parametrize("size", [3, 7, 11])
@pytest.mark.parametrize("side", [8, 16, 6])
def test_rpa_pooling_equals_adaptive_average_pooling(size, side):
    x = torch.randn(2, 4, side, side + 2)
    assert torch.allclose(adaptive_avg_pool(x, size), F.adaptive_avg_pool2d(x, size), atol=1e-6)


def test_rpa_pools_to_3_7_11_reduces_by_4_and_upsamples_back():
    torch.manual_seed(0)
    rpa = RegionPyramidAggregation(64)
    assert rpa.bins == (3, 7, 11)
    assert [c[0].out_channels for c in rpa.bin_convs] == [16, 16, 16]
    x = torch.randn(2, 64, 8, 8)
    regions = rpa.region_features(x)
    assert [tuple(r.shape) for r in regions] == [(2, 16, 8, 8)] * 3
    assert all((r >= 0).all() for r in regions)  # ReLU after the bin convolution
    # a region feature is a function of the s x s pooled map only: inputs with the same 3x3 pooling agree
    delta = torch.zeros_like(x)
    delta[:, :, 0, 0], delta[:, :, 0, 1] = 1.0, -1.0  # both in the first 3x3 bin (rows 0..2, cols 0..2)
    assert torch.allclose(adaptive_avg_pool(x + delta, 3), adaptive_avg_pool(x, 3), atol=1e-6)
    assert torch.allclose(rpa.region_features(x + delta)[0], regions[0], atol=1e-5)
    assert not torch.allclose(rpa.region_features(x + delta)[2], regions[2], atol=1e-5)


def test_rpa_attention_is_hw_by_hw_and_rows_sum_to_one():
    torch.manual_seed(0)
    rpa = RegionPyramidAggregation(64)
    maps = rpa.attention_maps(torch.randn(2, 64, 8, 6))
    assert len(maps) == 3
    for attention in maps:
        assert attention.shape == (2, 48, 48)
        assert (attention >= 0).all()
        assert torch.allclose(attention.sum(dim=-1), torch.ones(2, 48), atol=1e-5)


def test_rpa_concatenates_x_with_the_three_attended_projections():
    torch.manual_seed(0)
    rpa = RegionPyramidAggregation(64).eval()
    x = torch.randn(1, 64, 8, 8)
    aggregated = rpa.aggregate(x)
    assert aggregated.shape == (1, 64 + 3 * 16, 8, 8)
    assert torch.equal(aggregated[:, :64], x)
    value = rpa.value(x).flatten(2)
    first = torch.bmm(value, rpa.attention_maps(x)[0].transpose(1, 2)).reshape(1, 16, 8, 8)
    assert torch.allclose(aggregated[:, 64:80], first, atol=1e-5)
    assert rpa(x).shape == x.shape


# --------------------------------------------------------------------------------------------------------- APF
def test_apf_fuses_three_levels_with_a_gate_and_a_residual():
    torch.manual_seed(0)
    apf = AdaptivePyramidFusion(8, 16, 16, 8).eval()
    fine, middle, coarse = torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4)
    out = apf(fine, middle, coarse)
    assert out.shape == (1, 8, 16, 16)
    fused = apf.fused(fine, middle, coarse)
    gate = apf.gate.gate(fused)
    assert torch.allclose(out, fused + fused * gate, atol=1e-6)
    # each level reaches the output
    for index in range(3):
        levels = [fine, middle, coarse]
        levels[index] = levels[index] + 1.0
        assert not torch.allclose(apf(*levels), out)
    # residual add: a gate forced to 0 leaves the fused map, a gate forced to 1 doubles it
    apf.gate.gate = lambda t: torch.zeros(t.shape[0], t.shape[1], 1, 1)
    assert torch.allclose(apf(fine, middle, coarse), fused, atol=1e-6)
    apf.gate.gate = lambda t: torch.ones(t.shape[0], t.shape[1], 1, 1)
    assert torch.allclose(apf(fine, middle, coarse), 2 * fused, atol=1e-6)
