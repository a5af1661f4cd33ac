"""The layers a backbone's output layer is grown into, and the score branch (:class:`MultiHeadArch` builds them).

- :class:`MultiHeadConv2d`: the grown output layer; it hands the backbone the mean of its K heads and keeps all
  heads until the wrapper collects them (the backbone's ``forward()`` is not touched, so the heads travel beside it).
- :class:`MultiHeadInputConv2d`: a conv of a multi-stage backbone that reads a headed stage image gets all K head
  images of that stage (the reference multi-head HINet/MPRNet layout).
- :class:`ScoreBranch` and :func:`image_scores`: per-pixel and per-image logits of each head being the winner.
- :func:`outputs_as_list` and :func:`crop_to`: the backbone's output(s) as a list; a top-left crop.
"""
import torch
from basicsr.utils import get_root_logger
from torch import nn

__all__ = ['MultiHeadConv2d', 'MultiHeadInputConv2d', 'ScoreBranch', 'image_scores', 'outputs_as_list', 'crop_to']


def _conv_settings(conv):
    """Everything but the channel counts of a Conv2d, to build a grown copy of it."""
    return dict(
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype)


class MultiHeadConv2d(nn.Conv2d):
    """A Conv2d with ``num_heads * head_channels`` output channels that returns the mean of its heads.

    The weight is head-major: output channel ``k * C + c`` is channel ``c`` of head ``k`` (the reference
    multi-head NAFNet/Restormer layout), so its ``weight``/``bias`` keys and shapes equal theirs.

    Forward: ``x`` (B, C_in, h, w) -> mean of heads (B, C, h, w), which the backbone continues with. All heads
    ``(B, K, C, h, w)`` and the mean are kept until :meth:`pop_heads` is called by :class:`MultiHeadArch`.
    When ``detach_mean`` is set (the layer reaches the network output only through an additive tail), the mean is
    handed on without gradient, so every head's gradient comes from its own output only (exact, no cancellation).

    Loading a single-head checkpoint (``C`` output channels) replicates that layer into every head (warm start).
    """

    def __init__(self, conv, num_heads, detach_mean=True):
        super().__init__(conv.in_channels, conv.out_channels * num_heads, **_conv_settings(conv))
        self.num_heads = num_heads
        self.head_channels = conv.out_channels
        self.detach_mean = detach_mean
        self.layer_name = ''
        self._stash = None
        #: Keep the layer's input features for :meth:`pop_input` (set when a score branch reads them).
        self.keep_input = False
        self._input = None
        self._init_from(conv)

    @torch.no_grad()
    def _init_from(self, conv):
        """Head 0 takes the backbone's own initial weights; heads 1..K-1 a fresh draw of the same scale."""
        c = self.head_channels
        w0 = conv.weight.detach()
        std = w0.std() if w0.numel() > 1 else w0.abs().mean()
        self.weight[:c].copy_(w0)
        if self.num_heads > 1 and float(std) > 0:
            fresh = self.weight[c:]
            fresh.mul_(std / fresh.std().clamp_min(1e-12))
        elif self.num_heads > 1:
            self.weight[c:].copy_(w0.repeat(self.num_heads - 1, 1, 1, 1))
        if self.bias is not None:
            self.bias.copy_(conv.bias.detach().repeat(self.num_heads))

    def forward(self, x):
        """(B, C_in, h, w) -> mean of the heads (B, C, h, w); all heads are kept for :meth:`pop_heads`."""
        if self._stash is not None:
            raise RuntimeError(f'MultiHeadArch: the output layer "{self.layer_name}" was called twice in one '
                               'forward pass. A head layer must be used once per forward; name another layer in '
                               '`head_layers`.')
        out = super().forward(x)
        b, _, h, w = out.shape
        heads = out.view(b, self.num_heads, self.head_channels, h, w)
        mean = heads.mean(dim=1)
        if self.detach_mean:
            # detached in the stash too: head k = y(mean) + a * (R_k - mean) must carry gradient through R_k only
            # (a mean with gradient here would send -a/K of every head's gradient into all the other heads)
            mean = mean.detach()
        self._stash = (heads, mean)
        if self.keep_input:
            self._input = x
        # a copy: backbones may add to the returned tensor in place (MSRResNet's `out += base`)
        return mean.clone()

    def pop_input(self):
        """Return and forget the input features (B, C_in, h, w) of the last forward (``keep_input`` set)."""
        features, self._input = self._input, None
        if features is None:
            raise RuntimeError(f'MultiHeadArch: the output layer "{self.layer_name}" kept no input features.')
        return features

    def peek_heads(self):
        """``(heads (B, K, C, h, w), mean (B, C, h, w))`` of the forward in progress, kept for :meth:`pop_heads`."""
        if self._stash is None:
            raise RuntimeError(f'MultiHeadArch: the output layer "{self.layer_name}" was not called in forward.')
        return self._stash

    def pop_heads(self):
        """Return and forget ``(heads (B, K, C, h, w), mean (B, C, h, w))`` of the last forward."""
        stash = self.peek_heads()
        self._stash = None
        return stash

    def forget(self):
        """Drop whatever the last forward kept (heads, input features): called after every pass, failed or not."""
        self._stash = None
        self._input = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + 'weight'
        if key in state_dict:
            loaded = state_dict[key]
            out_ch = loaded.shape[0]
            if out_ch != self.out_channels:
                if out_ch == self.head_channels:
                    state_dict[key] = loaded.repeat(self.num_heads, *([1] * (loaded.dim() - 1)))
                    if prefix + 'bias' in state_dict:
                        state_dict[prefix + 'bias'] = state_dict[prefix + 'bias'].repeat(self.num_heads)
                    get_root_logger().info(f'MultiHeadArch: single-head checkpoint layer "{prefix[:-1]}" replicated '
                                           f'into all {self.num_heads} heads (warm start).')
                elif out_ch % self.head_channels == 0:
                    raise ValueError(
                        f'The checkpoint\'s output layer "{prefix[:-1]}" has {out_ch // self.head_channels} heads, '
                        f'but network_g.num_heads is {self.num_heads}. Fix: set `num_heads: '
                        f'{out_ch // self.head_channels}` (and the `combine` it was trained with), or load a '
                        'single-head checkpoint to warm-start every head.')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class MultiHeadInputConv2d(nn.Conv2d):
    """A Conv2d that reads a headed stage image and gets all K head images, stacked head-major on the channels.

    For a multi-stage backbone whose later stage reads an earlier stage's image through a conv ``c`` (input
    ``x = y(mean)``, additive in the head layer ``producer`` with scale ``a``), head ``k``'s image is
    ``x + a * (R_k - mean)``; this layer convolves the K head images concatenated on the channels (input channel
    ``k * C + c`` is channel ``c`` of head ``k``), so its weight has ``K * C`` input channels: the layout of the
    reference multi-head HINet/MPRNet (``sam.conv3``). A fresh layer and a single-head checkpoint's weight ``W`` start
    as ``W / K`` for every head, i.e. as the plain conv of the mean image.

    Forward: ``x`` (B, C, h, w), the backbone's stage image built from the mean of the heads -> (B, C_out, h', w').
    """

    def __init__(self, conv, producer, scale=1.0):
        num_heads = producer.num_heads
        super().__init__(conv.in_channels * num_heads, conv.out_channels, **_conv_settings(conv))
        self.num_heads = num_heads
        self.head_channels = conv.in_channels
        self.scale = scale
        # a plain reference, not a submodule: the producer's parameters stay under its own name
        object.__setattr__(self, 'producer', producer)
        with torch.no_grad():
            self.weight.copy_(conv.weight.detach().repeat(1, num_heads, 1, 1) / num_heads)
            if self.bias is not None:
                self.bias.copy_(conv.bias.detach())

    def forward(self, x):
        """(B, C, h, w) stage image of the mean head -> conv of the K head images (B, K * C, h, w)."""
        heads, mean = self.producer.peek_heads()
        delta = heads - mean.unsqueeze(1)
        stacked = x.unsqueeze(1) + (delta if self.scale == 1.0 else self.scale * delta)
        return super().forward(stacked.flatten(1, 2))

    def extra_repr(self):
        return f'{super().extra_repr()}, heads_of={self.producer.layer_name!r}'

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + 'weight'
        if key in state_dict and state_dict[key].dim() == 4 and state_dict[key].shape[1] != self.in_channels:
            in_ch = state_dict[key].shape[1]
            if in_ch == self.head_channels:
                state_dict[key] = state_dict[key].repeat(1, self.num_heads, 1, 1) / self.num_heads
                get_root_logger().info(f'MultiHeadArch: single-head checkpoint layer "{prefix[:-1]}" replicated '
                                       f'over the {self.num_heads} head images it reads (warm start).')
            elif in_ch % self.head_channels == 0:
                raise ValueError(
                    f'The checkpoint\'s layer "{prefix[:-1]}" reads {in_ch // self.head_channels} head images, but '
                    f'network_g.num_heads is {self.num_heads}. Fix: set `num_heads: {in_ch // self.head_channels}`.')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class ScoreBranch(nn.Sequential):
    """Per-pixel logits of each extended head being the winner, from the features that feed the output layer
    (resilient multiple-choice learning, Letzelter et al., NeurIPS 2023).

    conv3x3 (C_in -> 32), GELU, conv1x1 (32 -> K'); the last conv starts at zero, so every head starts equally
    likely. Forward: (B, C_in, h, w) -> (B, K', h, w).
    """

    def __init__(self, in_channels, num_outputs, hidden=32):
        super().__init__(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, num_outputs, 1))
        nn.init.zeros_(self[2].weight)
        nn.init.zeros_(self[2].bias)


def image_scores(scores):
    """Per-image logits from per-pixel ones: (B, K', H, W) -> (B, K') (the spatial mean)."""
    return scores.mean(dim=(2, 3))


def outputs_as_list(out):
    """A backbone's output as ``(list of tensors, whether it was a single tensor)``."""
    if torch.is_tensor(out):
        return [out], True
    if isinstance(out, (list, tuple)) and all(torch.is_tensor(o) for o in out):
        return list(out), False
    raise TypeError(f'MultiHeadArch: the backbone returned {type(out).__name__}; a tensor or a list of tensors '
                    '(multi-stage backbones) is supported.')


def crop_to(x, height, width):
    """Top-left crop of the last two dims of ``x`` to (height, width)."""
    if x.shape[-2] == height and x.shape[-1] == width:
        return x
    return x[..., :height, :width]
