"""Training losses named by the model cards' ``training.recipe.loss`` (torch; MONAI's Dice losses where they fit).

Semantic models output logits (B, K, H, W), channel c = label c, channel 0 background; targets are (B, H, W) int64
label maps. Every loss takes ``(logits, target, model)`` and returns a scalar tensor:

- ``dice`` (Smistad, Kim): MONAI ``DiceLoss`` on the softmax over every class, background included, Dice computed
  over the whole batch (``batch=True``) so a class absent from one frame does not make that frame's term 0/0.
  Background stays in: without it a freshly initialised network that paints one class everywhere sits in a flat
  spot of the loss (seen on usgra-seg: the Smistad U-Net predicted vessel on every pixel for 20+ epochs).
- ``dice_ce``: MONAI ``DiceCELoss``: Dice over the foreground classes (the cross-entropy, over all classes, already
  covers the background, as in nnU-Net) plus cross-entropy.
- ``bce_dice_l2`` (Wu et al., RAGCM): binary cross-entropy of each foreground class's softmax probability against
  its one-hot target, plus the Dice loss above, plus ``l2`` (default 1e-3) times the sum of squared weights of the
  convolution and linear layers (the paper's L2 term; biases and normalisation parameters are left out).
- ``maskrcnn`` (BPMSegNet): the instance model returns its own loss terms (RPN objectness and box, class, box,
  mask) from ``model(images, targets)``; their sum is the loss (see :func:`instance_loss`).
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F

LOSS_NAMES = ("dice", "dice_ce", "bce_dice_l2", "maskrcnn")

SemanticLoss = Callable[[torch.Tensor, torch.Tensor, torch.nn.Module], torch.Tensor]


def _dice_loss():
    from monai.losses import DiceLoss

    return DiceLoss(include_background=True, to_onehot_y=True, softmax=True, batch=True)


def l2_penalty(model: torch.nn.Module) -> torch.Tensor:
    """Sum of squared weights of every convolution and linear layer of ``model``."""
    terms = [module.weight.pow(2).sum() for module in model.modules()
             if isinstance(module, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)) and module.weight is not None]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def semantic_loss(name: str, l2: float = 1e-3) -> SemanticLoss:
    """The loss function for a semantic recipe; ValueError names the known losses for anything else."""
    if name == "dice":
        dice = _dice_loss()
        return lambda logits, target, model: dice(logits, target.unsqueeze(1))
    if name == "dice_ce":
        from monai.losses import DiceCELoss

        dice_ce = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
        return lambda logits, target, model: dice_ce(logits, target.unsqueeze(1))
    if name == "bce_dice_l2":
        dice = _dice_loss()

        def bce_dice_l2(logits: torch.Tensor, target: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
            probabilities = torch.softmax(logits, dim=1)[:, 1:]
            one_hot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probabilities.dtype)
            bce = F.binary_cross_entropy(probabilities.clamp(1e-6, 1 - 1e-6), one_hot)
            return bce + dice(logits, target.unsqueeze(1)) + l2 * l2_penalty(model).to(logits.device)

        return bce_dice_l2
    if name == "maskrcnn":
        raise ValueError("loss 'maskrcnn' belongs to instance models: use instance_loss(model(images, targets))")
    raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSS_NAMES)}")


def instance_loss(terms: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Total Mask R-CNN loss: the sum of the model's loss terms (each a scalar tensor)."""
    if not terms:
        raise ValueError("the instance model returned no loss terms")
    return torch.stack([value.reshape(()) for value in terms.values()]).sum()
