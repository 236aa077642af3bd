"""BPMSegNet: its three modules (SLCF, SAG, FPN with transposed convs + P5->P3 skip) and the two-stage pipeline.

SLCF follows the paper's Eq. 2 (one kernel per scale, applied at dilation r and at dilation 1): the tests check
that it is a true contrast (exactly 0 on a constant map away from the borders) and that its 512 channels are
gated by a 512 -> 64 -> 512 SAG and replace P2.

The pipeline tests run the card's architecture at 64x64 with few proposals and RoIs (the paper uses 640x640).
"""

import pytest
import torch
import torch.nn.functional as F

from NerveSegLogic.models import registry
from NerveSegLogic.models.bpmsegnet import BPMFeaturePyramid, SelfAttentionGate, SpatialLocalContrast

torch.set_num_threads(2)

SMALL = dict(rpn_pre_nms_top_n=(100, 50), rpn_post_nms_top_n=(50, 20), rpn_batch_size=64, box_batch_size=8,
             detections_per_image=5)


# ------------------------------------------------------------------------------------------------------- SLCF
def test_slcf_has_one_kernel_per_branch_at_dilation_2_4_8_16_and_512_output_channels():
    slcf = SpatialLocalContrast(256)
    assert slcf.dilations == (2, 4, 8, 16)
    # Eq. 2 has one kernel k per scale: four 3x3 kernels (128 out of 256 in), nothing else to learn (no bias)
    assert [tuple(k.shape) for k in slcf.kernels] == [(128, 256, 3, 3)] * 4
    assert len(list(slcf.parameters())) == 4
    assert slcf.out_channels == 512
    assert slcf(torch.randn(1, 256, 40, 40)).shape == (1, 512, 40, 40)
    with pytest.raises(ValueError, match=r"expects \(B, 256, H, W\)"):
        slcf(torch.randn(1, 128, 40, 40))


def test_slcf_is_exactly_zero_on_a_constant_input_away_from_the_borders_for_random_weights():
    for seed in range(3):
        torch.manual_seed(seed)
        slcf = SpatialLocalContrast(8, 4)
        value = float(torch.empty(()).uniform_(-3.0, 3.0))
        out = slcf(torch.full((2, 8, 48, 48), value))
        assert out.shape == (2, 16, 48, 48)
        # a pixel at least 16 px from every edge: both applications see only the constant, so they cancel
        assert out[:, :, 16:-16, 16:-16].abs().max() < 1e-6
        # near the border the zero padding reaches the dilated taps but not the plain ones, so it is not zero there
        for branch, r in enumerate(slcf.dilations):
            assert out[:, 4 * branch:4 * branch + 4, :r, :r].abs().max() > 1e-3


def test_slcf_differs_from_zero_where_the_input_has_contrast():
    torch.manual_seed(0)
    slcf = SpatialLocalContrast(8, 4)
    x = torch.full((1, 8, 48, 48), 1.0)
    x[:, :, 22:26, 22:26] = 3.0                                  # a small bright blob in the interior
    assert slcf(x)[:, :, 16:-16, 16:-16].abs().max() > 1e-3


def test_slcf_applies_one_weight_tensor_twice_so_changing_the_kernel_changes_both_terms():
    torch.manual_seed(0)
    slcf = SpatialLocalContrast(6, 3)
    x = torch.randn(1, 6, 40, 40)
    with torch.no_grad():
        for kernel in slcf.kernels:
            kernel.mul_(-2.0).add_(0.5)                          # change the kernels after construction
        out = slcf(x)
    for branch, r in enumerate(slcf.dilations):
        k = slcf.kernels[branch]
        expected = F.conv2d(x, k, padding=r, dilation=r) - F.conv2d(x, k, padding=1)
        assert torch.allclose(out[:, 3 * branch:3 * branch + 3], expected, atol=1e-5)
    # a kernel with only its centre tap: both applications read the same pixel and cancel everywhere, borders too;
    # this holds only if the one edit reached both terms
    with torch.no_grad():
        for kernel in slcf.kernels:
            kernel.zero_()
            kernel[:, :, 1, 1] = torch.randn(3, 6)
    assert slcf(x).abs().max() < 1e-6
    # and the gradient of the kernel collects both terms: for a centre-only kernel it is exactly zero
    slcf(x).sum().backward()
    assert all(k.grad is not None and k.grad[:, :, 1, 1].abs().max() < 1e-4 for k in slcf.kernels)


def test_slcf_branch_is_the_kernel_at_dilation_r_minus_the_same_kernel_at_dilation_1():
    slcf = SpatialLocalContrast(4, 1)
    with torch.no_grad():
        for kernel in slcf.kernels:
            kernel.fill_(1.0)
    impulse = torch.zeros(1, 4, 41, 41)
    impulse[0, 0, 20, 20] = 1.0
    out = slcf(impulse)[0]
    for branch, d in enumerate((2, 4, 8, 16)):
        response = out[branch]
        # +1 where only the dilated application reaches (offsets of d), -1 where only the plain one does (offset 1)
        assert response[20 + d, 20 + d] == 1.0 and response[20 - d, 20] == 1.0
        assert response[21, 21] == -1.0 and response[20, 19] == -1.0
        assert response[20, 20] == 0.0                           # both centres cancel
        assert int((response != 0).sum()) == 16                  # 8 dilated taps + 8 plain taps, centres cancel


# -------------------------------------------------------------------------------------------------------- SAG
def test_sag_gate_is_sigmoid_of_shared_mlp_on_gap_plus_gmp():
    torch.manual_seed(0)
    sag = SelfAttentionGate(32, reduction=4)
    x = torch.randn(2, 32, 6, 6)
    expected = torch.sigmoid(sag.mlp(x.mean(dim=(2, 3))) + sag.mlp(x.amax(dim=(2, 3))))
    gate = sag.gate(x)
    assert torch.allclose(gate[:, :, 0, 0], expected, atol=1e-6)
    assert ((gate > 0) & (gate < 1)).all()
    assert torch.allclose(sag(x), x * gate, atol=1e-6)


def test_sag_uses_max_pooling_too_and_a_zero_gate_removes_its_channel():
    sag = SelfAttentionGate(8, reduction=1)
    with torch.no_grad():  # identity dense layers: gate = sigmoid(relu(GAP) + relu(GMP))
        for layer in (sag.mlp[0], sag.mlp[2]):
            layer.weight.copy_(torch.eye(8))
            layer.bias.zero_()
    y = torch.zeros(1, 8, 4, 4)
    y[0, 3, 0, 0], y[0, 3, 0, 1] = 4.0, -4.0          # channel 3: average 0, maximum 4
    gate = sag.gate(y)[0, :, 0, 0]
    assert torch.isclose(gate[3], torch.sigmoid(torch.tensor(4.0)))
    assert torch.isclose(gate[2], torch.tensor(0.5))
    with torch.no_grad():                           # force channel 5's gate to ~0
        sag.mlp[2].bias[5] = -1e4
    z = torch.randn(1, 8, 4, 4)
    assert sag(z)[0, 5].abs().max() < 1e-6
    assert sag(z)[0, 4].abs().max() > 0


# -------------------------------------------------------------------------------------------------------- FPN
def test_fpn_top_down_uses_2x2_transposed_convs_and_a_stride_4_skip_from_p5_to_p3():
    fpn = BPMFeaturePyramid((8, 16, 16, 16), channels=16)
    for up in fpn.up:
        assert isinstance(up, torch.nn.ConvTranspose2d) and up.kernel_size == (2, 2) and up.stride == (2, 2)
    assert isinstance(fpn.skip_up, torch.nn.ConvTranspose2d)
    assert fpn.skip_up.kernel_size == (4, 4) and fpn.skip_up.stride == (4, 4)
    feats = [torch.randn(1, 8, 32, 32), torch.randn(1, 16, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4)]
    pyramid = fpn(feats)
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]


def test_p5_reaches_p3_through_the_skip_even_with_the_p4_path_cut():
    torch.manual_seed(0)
    feats = [torch.randn(1, 8, 32, 32), torch.randn(1, 16, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4)]
    changed = [f.clone() for f in feats]
    changed[3] = changed[3] + 1.0
    for skip in (True, False):
        fpn = BPMFeaturePyramid((8, 16, 16, 16), channels=16, skip_concat=skip)
        with torch.no_grad():  # cut P4 -> P3 so that only the skip can carry P5 into P3
            fpn.up[1].weight.zero_()
            fpn.up[1].bias.zero_()
        m3_before = fpn.top_down(feats)[1]
        m3_after = fpn.top_down(changed)[1]
        assert (not torch.allclose(m3_before, m3_after)) == skip


def test_p2_is_replaced_by_slcf_then_gated_by_a_512_64_512_sag_then_bridged_to_256():
    torch.manual_seed(0)
    fpn = BPMFeaturePyramid((128, 256, 256, 256), channels=256)
    gate = fpn.sag[0]
    assert [tuple(layer.weight.shape) for layer in (gate.mlp[0], gate.mlp[2])] == [(64, 512), (512, 64)]
    assert [tuple(g.mlp[0].weight.shape) for g in fpn.sag[1:]] == [(16, 256)] * 3     # other levels as before
    assert fpn.slcf.out_channels == 512
    assert tuple(fpn.slcf_bridge.weight.shape) == (256, 512, 1, 1)
    feats = [torch.randn(1, 128, 32, 32), torch.randn(1, 256, 16, 16), torch.randn(1, 256, 8, 8),
             torch.randn(1, 256, 4, 4)]
    with torch.no_grad():
        pyramid = fpn(feats)
        p2 = fpn.output[0](fpn.top_down(feats)[0])
        expected = fpn.slcf_bridge(gate(fpn.slcf(p2)))           # no residual add of the plain P2
    assert [p.shape[1] for p in pyramid] == [256] * 5
    assert torch.allclose(pyramid[0], expected, atol=1e-5)
    # no residual: with the SLCF kernels zeroed nothing of the plain P2 gets through, only the bridge's bias
    with torch.no_grad():
        for kernel in fpn.slcf.kernels:
            kernel.zero_()
        p2_out = fpn(feats)[0]
    assert torch.allclose(p2_out, fpn.slcf_bridge.bias[None, :, None, None].expand_as(p2_out), atol=1e-6)


# ----------------------------------------------------------------------------------------------- the pipeline
def synthetic_scene():
    image = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.2
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:30, 6:28] = 1
    masks[1, 36:60, 30:60] = 1
    image[0, 0][masks[0].bool()] += 0.7
    image[0, 0][masks[1].bool()] += 0.4
    target = {"boxes": torch.tensor([[6.0, 8, 28, 30], [30.0, 36, 60, 60]]), "labels": torch.tensor([1, 2]),
              "masks": masks}
    return image, target


@pytest.fixture(scope="module")
def eval_model():
    torch.manual_seed(0)
    return registry.build("bpmsegnet", **SMALL).eval()


def test_training_returns_the_five_losses_and_a_few_steps_lower_the_total():
    torch.manual_seed(0)
    model = registry.build("bpmsegnet", **SMALL).train()
    image, target = synthetic_scene()

    def losses_with_fixed_sampling():
        torch.manual_seed(123)  # the same anchor/RoI sampling before and after training
        with torch.no_grad():
            return model(image, [target])

    before = losses_with_fixed_sampling()
    assert set(before) == {"loss_rpn_objectness", "loss_rpn_box", "loss_class", "loss_box", "loss_mask"}
    assert all(v.ndim == 0 and torch.isfinite(v) and v >= 0 for v in before.values())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    for step in range(3):
        torch.manual_seed(step)
        loss = sum(model(image, [target]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = losses_with_fixed_sampling()
    assert float(sum(after.values())) < float(sum(before.values())), (before, after)

    # an image with no objects: only negatives, zero box and mask losses, and still a backward pass
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)}
    losses = model(image, [empty])
    sum(losses.values()).backward()
    assert float(losses["loss_rpn_box"].detach()) == 0.0 and float(losses["loss_mask"].detach()) == 0.0
    assert float(losses["loss_class"].detach()) > 0


def test_eval_returns_well_formed_instances(eval_model):
    model = eval_model
    image, _ = synthetic_scene()
    with torch.no_grad():
        (result,) = model(torch.cat([image]))
    n = result["boxes"].shape[0]
    assert n > 0  # an untrained model still passes proposals above the 0.05 score threshold (1/3 per class)
    assert result["boxes"].shape == (n, 4) and result["boxes"].dtype == torch.float32
    assert result["labels"].shape == (n,) and result["labels"].dtype == torch.int64
    assert set(result["labels"].tolist()) <= {1, 2}
    assert result["scores"].shape == (n,) and ((result["scores"] > 0) & (result["scores"] <= 1)).all()
    assert result["masks"].shape == (n, 64, 64) and result["masks"].dtype == torch.float32
    assert result["masks"].min() >= 0 and result["masks"].max() <= 1
    boxes = result["boxes"]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 0] < boxes[:, 2]).all()
    # masks are zero outside their boxes
    for box, mask in zip(boxes, result["masks"]):
        x1, y1, x2, y2 = box.floor().int().tolist()
        outside = mask.clone()
        outside[max(y1, 0):y2 + 1, max(x1, 0):x2 + 1] = 0
        assert outside.abs().max() == 0


def test_eval_with_no_detections_returns_empty_tensors(eval_model):
    eval_model.roi_heads.score_threshold = 1.0  # no class probability exceeds 1
    try:
        with torch.no_grad():
            results = eval_model(torch.rand(2, 1, 64, 64))
    finally:
        eval_model.roi_heads.score_threshold = 0.05
    assert len(results) == 2
    for result in results:
        assert result["boxes"].shape == (0, 4) and result["labels"].shape == (0,)
        assert result["scores"].shape == (0,) and result["masks"].shape == (0, 64, 64)


def test_bad_targets_are_refused_with_the_expected_shapes(eval_model):
    model = eval_model.train()
    image, target = synthetic_scene()
    with pytest.raises(ValueError, match="labels must be 1..2"):
        model(image, [dict(target, labels=torch.tensor([1, 3]))])
    with pytest.raises(ValueError, match="do not agree"):
        model(image, [dict(target, masks=target["masks"][:1])])
    model.eval()
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.rand(1, 1, 60, 64))


def test_full_model_trains_one_step_on_two_128px_images_and_then_runs_eval():
    torch.manual_seed(0)
    model = registry.build("bpmsegnet", **SMALL).train()
    images = torch.rand(2, 1, 128, 128, generator=torch.Generator().manual_seed(1)) * 0.2
    targets = []
    for index, (y0, x0) in enumerate(((16, 20), (60, 40))):
        masks = torch.zeros(1, 128, 128, dtype=torch.uint8)
        masks[0, y0:y0 + 40, x0:x0 + 36] = 1
        images[index, 0][masks[0].bool()] += 0.6
        targets.append({"boxes": torch.tensor([[float(x0), float(y0), x0 + 36.0, y0 + 40.0]]),
                        "labels": torch.tensor([index + 1]), "masks": masks})
    kernel_before = model.fpn.slcf.kernels[0].detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    optimizer.zero_grad()
    loss.backward()
    assert model.fpn.slcf.kernels[0].grad.abs().sum() > 0 and model.fpn.sag[0].mlp[0].weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(model.fpn.slcf.kernels[0].detach(), kernel_before)
    model.eval()
    with torch.no_grad():
        results = model(images)
    assert len(results) == 2
    for result in results:
        n = result["boxes"].shape[0]
        assert torch.isfinite(result["boxes"]).all() and torch.isfinite(result["scores"]).all()
        assert result["masks"].shape == (n, 128, 128)
