"""Accumulates per-head metric scores over a validation set and turns them into Eq. 7a/7b results."""
import torch
from collections import OrderedDict


class HeadMetricAccumulator:
    """Sums per-head scores image by image; gives per-head means, Eq. 7a (overall), Eq. 7b (best single head).

    Args:
        metrics_opt (dict): the ``val.metrics`` section: ``{name: {type: ..., better: higher|lower, ...}}``.
        num_outputs (int): K', the number of (extended) heads.

    :meth:`add` takes ``{name: Tensor (B, K')}``; :meth:`results` returns an OrderedDict with, per metric ``m``:
    ``m`` (best single head's mean), and when K' > 1 ``m_overall``, ``m_worst``, ``m_h0..m_h{K'-1}``, then
    ``best_head`` (for the first metric).
    """

    def __init__(self, metrics_opt, num_outputs):
        self.names = list(metrics_opt)
        self.higher = {name: (opt or {}).get('better', 'higher') == 'higher' for name, opt in metrics_opt.items()}
        self.num_outputs = num_outputs
        self.head_sums = {name: torch.zeros(num_outputs, dtype=torch.float64) for name in self.names}
        self.best_sums = {name: 0.0 for name in self.names}
        self.worst_sums = {name: 0.0 for name in self.names}
        self.count = 0

    def add(self, scores):
        """Add one batch: ``scores[name]`` is (B, K') for every metric."""
        batch = None
        for name in self.names:
            s = scores[name].detach().double().cpu()
            batch = s.shape[0]
            self.head_sums[name] += s.sum(dim=0)
            best, worst = (s.max(dim=1)[0], s.min(dim=1)[0]) if self.higher[name] else (s.min(dim=1)[0],
                                                                                        s.max(dim=1)[0])
            self.best_sums[name] += float(best.sum())
            self.worst_sums[name] += float(worst.sum())
        self.count += batch or 0

    def all_reduce(self, device):
        """Sum the accumulators over all distributed ranks (every rank must call this)."""
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            return
        parts = [torch.tensor([float(self.count)], dtype=torch.float64)]
        for name in self.names:
            parts += [
                self.head_sums[name],
                torch.tensor([self.best_sums[name], self.worst_sums[name]], dtype=torch.float64)
            ]
        packed = torch.cat(parts).to(device)
        dist.all_reduce(packed)
        packed = packed.cpu()
        self.count = int(round(float(packed[0])))
        offset = 1
        for name in self.names:
            self.head_sums[name] = packed[offset:offset + self.num_outputs].clone()
            offset += self.num_outputs
            self.best_sums[name], self.worst_sums[name] = float(packed[offset]), float(packed[offset + 1])
            offset += 2

    def head_means(self, name):
        """Per-head means of metric ``name``, (K',) float64."""
        return self.head_sums[name] / max(self.count, 1)

    def best_head(self, name=None):
        """Index of the best single head (Eq. 7b) for metric ``name`` (default: the first metric)."""
        name = name or (self.names[0] if self.names else None)
        if name is None or self.count == 0:
            return 0
        means = self.head_means(name)
        return int(torch.argmax(means) if self.higher[name] else torch.argmin(means))

    def results(self):
        """OrderedDict of floats: main metrics first, then overall/worst/per-head, then ``best_head``."""
        out = OrderedDict()
        for name in self.names:
            out[name] = float(self.head_means(name)[self.best_head(name)])
        if self.num_outputs > 1:
            for name in self.names:
                out[f'{name}_overall'] = self.best_sums[name] / max(self.count, 1)
                out[f'{name}_worst'] = self.worst_sums[name] / max(self.count, 1)
                for k, value in enumerate(self.head_means(name).tolist()):
                    out[f'{name}_h{k}'] = value
            if self.names:
                out['best_head'] = self.best_head()
        return out
