r"""Logit standardisation (Sun, Ren, Li, Wang and Cao, CVPR 2024).

KD shares one temperature between teacher and student, which asks the student to match the
teacher's logit range as well as its logit relations. Sun et al. instead apply a Z-score to each
sample's logits before the softmax, for both networks:

.. math::
    \mathcal{Z}(z) = \frac{z - \bar z}{\sigma(z)}, \qquad
    p = \mathrm{softmax}\big(\mathcal{Z}(z) / \tau\big)

which is the same as giving every sample and every network its own temperature
:math:`\tau\,\sigma(z)`. The Z-score is a pre-processing step of any logit-based loss (KD, DKD,
DIST, ...); this module only provides it.

How the authors combine it with KD and DKD on CIFAR-100 (``sunshangquan/logit-standardization-KD``,
``tools/train.py --logit-stand --base-temp 2 --kd-weight 9`` and ``mdistiller/distillers``):

- both the student's and the teacher's logits are standardised, then divided by the **same**
  base temperature :math:`\tau`; the loss keeps its :math:`\tau^2` factor (KD:
  :math:`\tau^2\,\mathrm{KL}(p^t \| p^s)` on the standardised logits);
- KD: base temperature 2 (3 for some pairs, e.g. vgg13 → vgg8, by the names of the published
  logs), KD weight 9; the CE weight is 0.1 in the repository's current configuration (its
  issue #25 confirms the KD weight of 9 is intended) and 1 in an earlier revision;
- DKD: α and β of the pair multiplied by the KD weight 9 (α = 9, β = 72 for
  resnet32x4 → resnet8x4) and T set to the base temperature 2; an earlier revision of the script
  set β = 9·α after α was already scaled (81) and left DKD's T at 4. The DKD warm-up stays.
- Published results (CIFAR-100, top-1): KD 76.62 / 76.11 and DKD 77.01 / 76.39 with the Z-score,
  for resnet32x4 → resnet8x4 / wrn-40-2 → wrn-16-2.

The standard deviation is the sample one (divisor :math:`K - 1`), as ``torch.std``'s default in
the authors' code; the population one would differ by :math:`\sqrt{K/(K-1)}`, a 0.5% change of
temperature for 100 classes. Gradients flow through the mean and the standard deviation, as in
the authors' code (nothing is detached).
"""

from __future__ import annotations

import torch

from ..checks import check_nonnegative


def standardize(logits: torch.Tensor, dim: int = -1, eps: float = 1e-7) -> torch.Tensor:
    r"""Z-score of each sample's logits along ``dim``.

    .. math::
        \mathcal{Z}(z)_c = \frac{z_c - \bar z}{\sigma(z) + \epsilon}, \qquad
        \bar z = \frac{1}{K} \sum_k z_k, \quad
        \sigma(z) = \sqrt{\frac{1}{K - 1} \sum_k (z_k - \bar z)^2}

    over the :math:`K` classes along ``dim``. A constant row (e.g. from a zero-initialised
    classifier) gives zeros with ``eps > 0``, and passes back a gradient of order
    :math:`1/\epsilon` — the formula's, as in the authors' code.

    Args:
        logits: any shape with ``K ≥ 2`` classes along ``dim``.
        dim: the class dimension.
        eps: added to the standard deviation (the authors' 1e-7); ≥ 0.

    Returns:
        A float32 tensor of the logits' shape (computed in float32 even under autocast).
        Standardising a tensor twice gives the same tensor, up to ``eps``.
    """
    eps = check_nonnegative(eps, "eps")
    if logits.dim() == 0 or logits.shape[dim] < 2:
        raise ValueError(
            f"standardize needs at least 2 classes along dim {dim} to compute a standard "
            f"deviation, got logits of shape {tuple(logits.shape)}"
        )
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = logits.float()
        mean = z.mean(dim=dim, keepdim=True)
        std = z.std(dim=dim, keepdim=True, correction=1)
        return (z - mean) / (std + eps)
