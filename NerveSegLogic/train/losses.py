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

Partial labels (:func:`marginal_loss`): a frame that labels only some of the model's classes (a nerve-only set) is
scored on its marginal distribution: the probabilities of the classes it does not label are summed into the
background's ("not nerve" = background + vessel), so the loss never teaches an unlabelled class as background.
"""

from __future__ import annotations

from typing import AbstractSet, Callable, Dict, List, Optional, Sequence, Tuple

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


# ------------------------------------------------------------------------------------------------ partial labels
def reduce_to_labelled(logits: torch.Tensor, target: torch.Tensor, labelled: Sequence[int]
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The marginal distribution of a frame that labels only the classes ``labelled`` (label values >= 1).

    Channel 0 of the result is "none of the labelled classes": the logsumexp of the background's and every
    unlabelled class's logits, so its softmax probability is the sum of theirs (softmax is shift-invariant, so the
    reduced logits' softmax is exactly the merged distribution). Channels 1..|L| are the labelled classes in label
    order, and the target is renumbered to match (0 stays 0). With every class labelled nothing is merged: the
    logits and target come back unchanged (the standard loss, exactly).

    Raises ValueError for a target value that is neither 0 nor a labelled class (the data contradicts its own
    label set)."""
    classes = logits.shape[1]
    kept = sorted(int(c) for c in labelled)
    if any(not 1 <= c < classes for c in kept):
        raise ValueError(f"labelled classes {kept} are not label values 1..{classes - 1} of the model's output")
    if kept == list(range(1, classes)):
        return logits, target
    merged = [c for c in range(classes) if c not in kept]  # background and the unlabelled classes
    rest = logits[:, merged].logsumexp(dim=1, keepdim=True)
    reduced = torch.cat([rest, logits[:, kept]], dim=1)
    table = torch.full((classes,), -1, dtype=target.dtype, device=target.device)
    table[0] = 0
    for index, label in enumerate(kept, start=1):
        table[label] = index
    mapped = table[target]
    if bool((mapped < 0).any()):
        found = sorted(int(v) for v in torch.unique(target[mapped < 0]).tolist())
        raise ValueError(f"target holds label value(s) {found} of classes the frame does not label (labelled: {kept})")
    return reduced, mapped


#: Losses a partially labelled batch may use: each applies unchanged to the reduced (marginal) distribution.
PARTIAL_LOSSES = ("dice", "dice_ce", "bce_dice_l2")


def marginal_loss(name: str, l2: float = 1e-3):
    """The recipe's loss for frames that may label only some classes: ``loss(logits, target, model, labelled)``.

    ``labelled``: one entry per frame of the batch, None (the frame labels every class) or the set of label values
    it labels. Frames are grouped by label set; each group's loss is the recipe's loss on its marginal distribution
    (:func:`reduce_to_labelled`: the unlabelled classes' probabilities are merged into "not labelled here", so
    they are never taught as background), and the groups' losses are averaged weighted by their frame counts. A
    batch whose frames all label every class gets the recipe's loss itself. ``labelled=None`` means all frames
    label every class."""
    if name not in PARTIAL_LOSSES:
        raise ValueError(f"loss {name!r} cannot train on partially labelled data (classes a frame does not label "
                         f"left out of the loss); the losses that can: {', '.join(PARTIAL_LOSSES)}")
    base = semantic_loss(name, l2=l2)

    def loss(logits: torch.Tensor, target: torch.Tensor, model: torch.nn.Module,
             labelled: Optional[Sequence[Optional[AbstractSet[int]]]] = None) -> torch.Tensor:
        full = tuple(range(1, logits.shape[1]))
        if labelled is None:
            return base(logits, target, model)
        if len(labelled) != logits.shape[0]:
            raise ValueError(f"{len(labelled)} label sets for a batch of {logits.shape[0]} frames")
        groups: Dict[Tuple[int, ...], List[int]] = {}
        for index, classes in enumerate(labelled):
            key = full if classes is None else tuple(sorted(int(c) for c in classes))
            groups.setdefault(key, []).append(index)
        if list(groups) == [full]:
            return base(logits, target, model)
        total = None
        for key, members in groups.items():
            rows = torch.as_tensor(members, device=logits.device)
            reduced, mapped = reduce_to_labelled(logits.index_select(0, rows), target.index_select(0, rows), key)
            term = base(reduced, mapped, model) * (len(members) / logits.shape[0])
            total = term if total is None else total + term
        return total

    return loss
