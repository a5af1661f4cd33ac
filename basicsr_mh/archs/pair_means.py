"""The extended heads of Eq. 6 as an autograd function whose backward is one small matrix product."""
import torch


class _PairMeans(torch.autograd.Function):
    """``(heads[:, i] + heads[:, j]) / 2`` for every pair; backward: ``W^T @ grad`` with the (K', K) pair weights.

    The forward is the index-select form (a non-finite head reaches only its own pairs). Autograd's backward of that
    form is two ``index_add`` over the head axis of a (B, K, C, H, W) zero tensor, slow on the CPU; a (K', K) matrix
    product gives the same sums in one pass.
    """

    @staticmethod
    def forward(ctx, heads, pair_i, pair_j):
        ctx.save_for_backward(pair_i, pair_j)
        ctx.num_heads = heads.shape[1]
        return (heads.index_select(1, pair_i) + heads.index_select(1, pair_j)) * 0.5

    @staticmethod
    def backward(ctx, grad):
        pair_i, pair_j = ctx.saved_tensors
        num_pairs, batch = pair_i.numel(), grad.shape[0]
        weights = torch.zeros(num_pairs, ctx.num_heads, dtype=grad.dtype, device=grad.device)
        rows = torch.arange(num_pairs, device=grad.device)
        half = torch.full((num_pairs, ), 0.5, dtype=grad.dtype, device=grad.device)
        weights.index_put_((rows, pair_i), half, accumulate=True)
        weights.index_put_((rows, pair_j), half, accumulate=True)
        heads_grad = torch.matmul(weights.t(), grad.reshape(batch, num_pairs, -1))
        return heads_grad.view(batch, ctx.num_heads, *grad.shape[2:]), None, None


def pair_means(heads, pair_i, pair_j):
    """Extended heads: (B, K, C, h, w) and the pairs' (K',) head indices -> (B, K', C, h, w) pair means."""
    return _PairMeans.apply(heads, pair_i, pair_j)
