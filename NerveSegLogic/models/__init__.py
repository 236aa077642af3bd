"""The model zoo: architectures of the seed papers and their baselines, built by name from model cards.

``from NerveSegLogic.models import registry`` is all callers need (see :mod:`.registry`); it does not import torch.
Architecture modules (``smistad_unet``, ``sa_unet``, ``ragcm``, ``bpmsegnet``, ``baselines``) and the building
blocks (``blocks``, ``detection``) are torch-only and are imported when a model is built.
"""
