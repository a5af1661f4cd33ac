"""The extended heads of Eq. 6 as an autograd function: one output tensor, a matrix-product backward."""
import torch


class _PairMeans(torch.autograd.Function):
    """``(heads[:, i] + heads[:, j]) * 0.5`` for every pair ``(i, j)``; backward: ``W^T @ grad`` with the (K', K)
    pair weights ``W``.

    The forward writes each pair into one (B, K', C, h, w) tensor (no full-size temporaries; a non-finite head reaches
    only its own pairs). Autograd's backward of the index-select form would be two ``index_add`` over the head axis
    of a zero tensor, slow on the CPU; the (K', K) matrix product gives the same sums in one pass.
    """

    @staticmethod
    def forward(ctx, heads, pairs):
        ctx.pairs = pairs
        ctx.num_heads = heads.shape[1]
        out = heads.new_empty(heads.shape[0], len(pairs), *heads.shape[2:])
        for index, (i, j) in enumerate(pairs):
            torch.add(heads[:, i], heads[:, j], out=out[:, index])
        return out.mul_(0.5)

    @staticmethod
    def backward(ctx, grad):
        weights = torch.zeros(len(ctx.pairs), ctx.num_heads, dtype=grad.dtype)
        for index, (i, j) in enumerate(ctx.pairs):
            weights[index, i] += 0.5
            weights[index, j] += 0.5
        batch = grad.shape[0]
        heads_grad = torch.matmul(weights.to(grad.device).t(), grad.reshape(batch, len(ctx.pairs), -1))
        return heads_grad.view(batch, ctx.num_heads, *grad.shape[2:]), None


def pair_means(heads, pairs):
    """Extended heads: (B, K, C, h, w) and the K' pairs ``[(i, j), ...]`` of head indices -> (B, K', C, h, w)."""
    return _PairMeans.apply(heads, [(int(i), int(j)) for i, j in pairs])
