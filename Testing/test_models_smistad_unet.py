"""The Smistad U-Net has no batch normalisation, so its initial weights decide whether the image reaches the output.

With PyTorch's default convolution initialisation a fresh model's logits varied by < 1e-3 over the image (the
biases dominate after 22 convolutions) and Dice training sat at "background everywhere"; He initialisation keeps the
activations' scale (see the module docstring)."""

import pytest
import torch

from NerveSegLogic.models.smistad_unet import build_smistad_unet


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_fresh_model_passes_the_image_through_to_its_logits(seed):
    torch.manual_seed(seed)
    model = build_smistad_unet(num_classes=3).eval()
    image = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        logits = model(image)
        flat = model(torch.full_like(image, 0.5))
    over_pixels = logits.std(dim=(2, 3)).mean().item()
    assert over_pixels > 0.05, f"logits nearly constant over the image (std {over_pixels:.2g})"
    # the output depends on the image, not only on the biases
    assert (logits - flat).abs().mean().item() > 0.05
    # and stays in a range a softmax does not saturate on
    assert logits.abs().max().item() < 50


def test_biases_start_at_zero_and_weights_at_he_scale():
    torch.manual_seed(0)
    model = build_smistad_unet(num_classes=3)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias.detach().abs().max().item() == 0.0 for c in convs)
    big = [c for c in convs if c.weight[0].numel() >= 288]  # enough weights for a stable std estimate
    for conv in big:
        fan_in = conv.weight[0].numel()
        expected = (2.0 / fan_in) ** 0.5
        assert abs(conv.weight.detach().std().item() / expected - 1.0) < 0.15
