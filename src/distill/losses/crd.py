r"""Contrastive representation distillation (Tian, Krishnan and Isola, ICLR 2020): pure parts.

CRD embeds the student's and the teacher's penultimate features (a linear layer and L2
normalisation each, :class:`distill.memory.Embed`), and trains both embeddings to tell the
positive pair (the same sample seen by the two networks) from K negatives (other samples, whose
embeddings come from a memory bank, :class:`distill.memory.ContrastMemory`). The loss is the
noise-contrastive estimation (NCE) loss of the reference implementation (RepDistiller's
``crd/criterion.py``, ``ContrastLoss``; the same in mdistiller), applied twice: once with the
student's embedding as anchor against the teacher's memory, once the other way round.

Defaults (RepDistiller and mdistiller): embedding dim 128, 16,384 negatives, NCE temperature
0.07, memory momentum 0.5; the CIFAR-100 total loss is CE + 0.8·(both NCE terms)
(RepDistiller: ``--distill crd -a 0 -b 0.8``; mdistiller: ``CRD.LOSS.FEAT_WEIGHT = 0.8``).
"""

from __future__ import annotations

import torch

from ..checks import check_positive, check_temperature
from ._reduce import check_not_empty


def contrast_scores(
    anchors: torch.Tensor, candidates: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    r"""Unnormalised NCE scores of each anchor against its candidates.

    .. math::
        S_{ik} = \exp\big(\langle m_{ik}, v_i \rangle / T\big)

    for anchors :math:`v_i` and candidates :math:`m_{ik}` (in CRD: column 0 the positive's
    memory row, columns 1..K the negatives'). Both are expected L2-normalised, so the exponent
    stays within :math:`\pm 1/T` (the reference's form; no max-subtraction).

    Args:
        anchors: ``[N, D]``; gradients flow into them.
        candidates: ``[N, K + 1, D]``.
        temperature: ``T > 0`` (0.07).

    Returns:
        ``[N, K + 1]`` float32 (computed in float32 even under autocast).
    """
    temperature = check_temperature(temperature)
    if anchors.dim() != 2 or candidates.dim() != 3 or candidates.shape[0] != anchors.shape[0]:
        raise ValueError(
            "contrast_scores needs anchors [N, D] and candidates [N, K + 1, D], got shapes "
            f"{tuple(anchors.shape)} and {tuple(candidates.shape)}"
        )
    if candidates.shape[2] != anchors.shape[1]:
        raise ValueError(
            f"anchors and candidates must have the same width D, got {anchors.shape[1]} and "
            f"{candidates.shape[2]}"
        )
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        dots = torch.bmm(candidates.float(), anchors.float().unsqueeze(2)).squeeze(2)
        return torch.exp(dots / temperature)


def crd_nce_loss(scores: torch.Tensor, num_samples: int, eps: float = 1e-7) -> torch.Tensor:
    r"""The NCE loss of CRD's reference implementation, for one direction.

    With normalised scores :math:`P_{i0}` (positive) and :math:`P_{ik}`, :math:`k = 1..K`
    (negatives), the uniform noise distribution :math:`P_n = 1/n` over the :math:`n` training
    samples, and :math:`c = K P_n = K / n`:

    .. math::
        \mathcal{L} = -\frac{1}{N} \sum_{i=1}^{N} \Big[
            \log \frac{P_{i0}}{P_{i0} + c + \epsilon}
            + \sum_{k=1}^{K} \log \frac{c}{P_{ik} + c + \epsilon} \Big]

    the log-probabilities that a discriminator :math:`h = P / (P + c)` calls the positive
    "data" and each negative "noise" (the paper's Eq. 18), summed over the K negatives and
    averaged over the batch.

    Args:
        scores: ``[N, K + 1]``, column 0 the positive; the scores divided by the memory's
            normalisation constant Z (:meth:`distill.memory.ContrastMemory.score` returns
            these). Gradients flow into them.
        num_samples: ``n``, the number of samples in the training set (the memory's rows).
        eps: the reference's 1e-7.

    Returns:
        A float32 scalar, computed in float32 even under autocast.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(
            "scores must be [N, K + 1] with the positive in column 0 and K >= 1 negatives, got "
            f"shape {tuple(scores.shape)}"
        )
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    eps = check_positive(eps, "eps")
    check_not_empty(scores, "scores")
    with torch.autocast(device_type=scores.device.type, enabled=False):
        p = scores.float()
        noise = (p.shape[1] - 1) / float(num_samples)
        log_data = torch.log(p[:, 0] / (p[:, 0] + noise + eps))
        log_noise = torch.log(noise / (p[:, 1:] + noise + eps))
        return -(log_data.sum() + log_noise.sum()) / p.shape[0]
