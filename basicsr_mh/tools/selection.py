"""Pick one restoration per image among a multi-head network's outputs, without ground truth.

Every rule takes the heads of one image, ``heads`` (K', C, H, W) float, and returns ``(index, image)``: the chosen
head index (``-1`` when the image is not one head, as for ``mean``) and the image (C, H, W).

* ``consensus``: the medoid: the head whose summed L2 distance (over all pixels) to the other heads is smallest. An
  outlying head never wins while three or more heads agree.
* ``mean``: the average of the heads (not one head; it can score above every single head).
* ``sharpness``: the head with the highest variance of the Laplacian of its luminance (the sharpest; it also
  favours noise and ringing).
* ``scores``: the head the score branch (``network_g.head_scores``) rates most likely to be the winner (the
  spatial mean of its per-pixel logits).
* ``scored-mean``: per pixel, the heads weighted by the softmax over heads of the score branch's logits.

A rule that sees only the input cannot beat the conditional mean E[y|x] under MSE, so the oracle's pick (Eq. 7a)
is out of reach without ground truth; averaging rules (``mean``, ``scored-mean``) approach E[y|x], picking rules
return one plausible, sharper head.
"""
import torch
import torch.nn.functional as F

from basicsr_mh.archs.multihead_layers import image_scores
from basicsr_mh_cli.parsers import SCORED_RULES  # noqa: F401  (the rules that need the score branch's logits)
from basicsr_mh_cli.parsers import SELECTION_RULES as RULES

_LAPLACE = torch.tensor([[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]])


def pairwise_distances(heads):
    """(K, C, H, W) -> (K, K) L2 distances between heads over all pixels (float64)."""
    flat = heads.reshape(heads.shape[0], -1).double()
    return torch.cdist(flat.unsqueeze(0), flat.unsqueeze(0)).squeeze(0)


def consensus_index(heads):
    """Index of the medoid head (ties: the lowest index)."""
    return int(pairwise_distances(heads).sum(dim=1).argmin())


def luminance(heads):
    """(K, C, H, W) RGB or gray -> (K, 1, H, W) (ITU-R BT.601 weights for 3 channels, channel mean otherwise)."""
    if heads.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=heads.dtype, device=heads.device).view(1, 3, 1, 1)
        return (heads * w).sum(dim=1, keepdim=True)
    return heads.mean(dim=1, keepdim=True)


def sharpness_scores(heads):
    """(K, C, H, W) -> (K,) variance of the Laplacian of the luminance (valid region)."""
    lum = luminance(heads.double())
    if min(lum.shape[-2:]) < 3:
        return lum.flatten(1).var(dim=1)
    lap = F.conv2d(lum, _LAPLACE.to(lum).view(1, 1, 3, 3))
    return lap.flatten(1).var(dim=1)


def sharpness_index(heads):
    """Index of the head with the highest variance of the Laplacian."""
    return int(sharpness_scores(heads).argmax())


def select(heads, rule, scores=None):
    """Apply ``rule`` (one of :data:`RULES`) to ``heads`` (K', C, H, W); returns ``(index or -1, (C, H, W))``.

    ``scores`` (K', H, W): the score branch's per-pixel logits, needed by :data:`SCORED_RULES`.
    """
    if rule in SCORED_RULES and scores is None:
        raise ValueError(f'--select {rule} needs a model trained with network_g.head_scores: true (this one has no '
                         'score branch). Fix: choose consensus, mean or sharpness.')
    if rule == 'scores':
        index = int(image_scores(scores[None])[0].argmax())
    elif rule == 'scored-mean':
        weights = torch.softmax(scores.to(heads.dtype), dim=0).unsqueeze(1)  # (K', 1, H, W)
        return -1, (weights * heads).sum(dim=0)
    elif rule == 'consensus':
        index = consensus_index(heads)
    elif rule == 'sharpness':
        index = sharpness_index(heads)
    elif rule == 'mean':
        return -1, heads.mean(dim=0)
    else:
        raise ValueError(f'unknown selection rule "{rule}"; choose one of {", ".join(RULES)}.')
    return index, heads[index]
