r"""Probabilistic knowledge transfer (Passalis and Tefas, ECCV 2018).

The student matches the teacher's *conditional probability distribution* of the samples of a
batch: how likely each sample is to be picked as a neighbour of each other one, estimated with
a cosine-similarity kernel. Only similarities are compared, so the embeddings' widths may differ.

We follow the authors' code (``passalis/probabilistic_kt``, ``nn/pkt.py``), which RepDistiller
and mdistiller copy, exactly:

- each embedding is divided by its L2 norm **plus** ``eps = 1e-7``;
- the kernel includes the diagonal (a sample's similarity with itself, 1) in every row;
- the divergence is ``mean(p_t * log((p_t + eps) / (p_s + eps)))``: an element mean over the
  :math:`N^2` entries, i.e. the batch mean of the row-wise KL divided once more by :math:`N`
  (not a sum over rows);

and the weight that goes with that normalisation: 30,000 next to CE with weight 1
(RepDistiller's CIFAR-100 script, ``--distill pkt -a 0 -b 30000``; mdistiller's
``PKT.LOSS.FEAT_WEIGHT``), applied by the method. The paper's equations sum over the other
samples only (as we read them) and leave the reduction to the implementation.
"""

from __future__ import annotations

import torch

from ..checks import check_positive


def _conditional(emb: torch.Tensor, eps: float) -> torch.Tensor:
    """Rows of the shifted cosine kernel, normalised to probabilities: [N, N]."""
    unit = emb / (torch.linalg.vector_norm(emb, dim=1, keepdim=True) + eps)
    kernel = (unit @ unit.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    eps: float = 1e-7,
) -> torch.Tensor:
    r"""PKT: divergence between the teacher's and student's cosine-kernel neighbour probabilities.

    .. math::
        K_{ij} = \frac{1}{2}\Big(\frac{e_i \cdot e_j}{(\|e_i\| + \epsilon)(\|e_j\| + \epsilon)}
                 + 1\Big) \in [0, 1], \qquad
        P_{ij} = \frac{K_{ij}}{\sum_{k=1}^{N} K_{ik}}

    .. math::
        \mathcal{L} = \frac{1}{N^2} \sum_{i=1}^{N} \sum_{j=1}^{N}
                      P^t_{ij} \log \frac{P^t_{ij} + \epsilon}{P^s_{ij} + \epsilon}

    with :math:`j = i` included, as in the authors' code (see the module docstring). A zero
    embedding gives a zero row of cosines (kernel ½), no NaN.

    Args:
        student_emb: ``[N, D_s]`` (trailing dimensions are flattened).
        teacher_emb: ``[N, D_t]``; ``D_t`` may differ from ``D_s``; a constant (no gradient
            flows into it).
        eps: the reference's 1e-7, both in the normalisation and inside the log.

    Returns:
        A float32 scalar, computed in float32 even under autocast.
    """
    eps = check_positive(eps, "eps")
    for name, emb in (("student_emb", student_emb), ("teacher_emb", teacher_emb)):
        if emb.dim() < 2 or emb.shape[0] < 1:
            raise ValueError(
                f"{name} must be a batch of embeddings, [N, D] (trailing dimensions are "
                f"flattened), got shape {tuple(emb.shape)}"
            )
    if student_emb.shape[0] != teacher_emb.shape[0]:
        raise ValueError(
            f"student and teacher embeddings must come from the same batch, got "
            f"{student_emb.shape[0]} and {teacher_emb.shape[0]} rows"
        )
    with torch.autocast(device_type=student_emb.device.type, enabled=False):
        p_s = _conditional(student_emb.reshape(student_emb.shape[0], -1).float(), eps)
        p_t = _conditional(teacher_emb.detach().reshape(teacher_emb.shape[0], -1).float(), eps)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()
