"""Validation of a multi-head model: every head scored on every image, Eq. 7a/7b results, images saved.

- :class:`HeadValidation`: the mixin of :class:`~basicsr_mh.models.multihead_model.MultiHeadImageRestorationModel`
  that runs BasicSR's ``validation()`` (sharded over the ranks when distributed), scores all heads per image
  (:func:`basicsr_mh.metrics.per_head_many`), logs and saves.
- :class:`HeadMetricAccumulator`: sums per-head scores over a validation set and turns them into Eq. 7a/7b results.
"""
import math
import torch
from basicsr.utils import get_root_logger, imwrite, tensor2img
from collections import OrderedDict
from os import path as osp
from torch.utils.data import default_collate
from tqdm import tqdm

from ..heads import head_pair_name
from ..metrics import per_head_many


def float_psnr_per_head(heads, gt, crop_border=0):
    """PSNR of float images with peak 1, no quantization: ``(B, K', C, H, W)``, ``(B, C, H, W)`` -> ``(B, K')``.

    The forks' ``use_image: false`` path (``calculate_psnr`` on the output tensors).
    """
    if crop_border:
        heads = heads[..., crop_border:-crop_border, crop_border:-crop_border]
        gt = gt[..., crop_border:-crop_border, crop_border:-crop_border]
    mse = (heads.double() - gt.double().unsqueeze(1)).pow(2).flatten(2).mean(dim=2)
    return (10 * torch.log10(1.0 / mse)).cpu()


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


class HeadValidation:
    """Mixin: BasicSR's ``validation()`` for a network with K' heads (see the module docstring).

    Uses the model's ``opt``, ``test()``, ``heads_output()``, ``feed_data()``, ``num_outputs`` and sets
    ``metric_results``/``best_head`` as BasicSR's validation does.
    """

    def validation(self, dataloader, current_iter, tb_logger, save_img=False, rgb2bgr=None, use_image=None):
        """BasicSR's validation (sharded over the ranks when distributed); ``rgb2bgr``/``use_image`` (the forks'
        extra arguments) override ``val.rgb2bgr``/``val.use_image`` (default true)."""
        flags = self.validation_flags(rgb2bgr, use_image)
        if self.opt.get('dist'):
            self._validate(*self._shard(dataloader), current_iter, tb_logger, save_img, flags)
        else:
            self._validate(dataloader.dataset, enumerate(dataloader), len(dataloader), current_iter, tb_logger,
                           save_img, flags)

    def validation_flags(self, rgb2bgr=None, use_image=None):
        """``{'rgb2bgr': bool, 'use_image': bool}``: the arguments where given, else ``val.*``, else true."""
        val_opt = self.opt.get('val') or {}
        given = {'rgb2bgr': rgb2bgr, 'use_image': use_image}
        return {name: bool(val_opt.get(name, True) if value is None else value) for name, value in given.items()}

    def head_scores(self, heads, gt, metrics_opt, flags=None):
        """``{name: (B, K')}`` for the ``val.metrics`` entries; ``flags`` (:meth:`validation_flags`, default the
        ``val`` options) set ``rgb2bgr`` and ``use_image``.

        ``rgb2bgr: false`` evaluates the RGB images as BGR ones (as the forks' ``tensor2img(rgb2bgr=False)``; it
        matters for ``test_y_channel``). ``use_image: false`` computes ``calculate_psnr`` without ``test_y_channel`` on
        the float outputs (peak 1) instead of the uint8 images; other metrics stay on uint8 images.
        """
        flags = flags or self.validation_flags()
        if not flags['rgb2bgr'] and heads.shape[-3] == 3:
            heads, gt = heads.flip(-3), gt.flip(-3)
        use_image = flags['use_image']
        scores, on_images = {}, {}
        for name, metric_opt in metrics_opt.items():
            if not use_image and metric_opt.get('type') == 'calculate_psnr' and not metric_opt.get('test_y_channel'):
                scores[name] = float_psnr_per_head(heads, gt, metric_opt.get('crop_border', 0))
            else:
                on_images[name] = metric_opt
        scores.update(per_head_many(heads, gt, on_images))  # a PSNR and an SSIM entry share one pass
        return {name: scores[name] for name in metrics_opt}

    def _named_head_scores(self, heads, metrics_opt, flags, dataset_name, val_data):
        """:meth:`head_scores` on ``self.gt``; a metric that fails raises a RuntimeError naming the metric, the dataset
        and the image (a metric inside BasicSR, e.g. NIQE on a small image, fails with no such context)."""
        try:
            return self.head_scores(heads, self.gt, metrics_opt, flags)
        except Exception as err:  # noqa: BLE001  (re-raised with the context below)
            failing = next(iter(metrics_opt))
            for name in metrics_opt:  # which one: each alone
                try:
                    self.head_scores(heads, self.gt, {name: metrics_opt[name]}, flags)
                except Exception:  # noqa: BLE001
                    failing = name
                    break
            image = (val_data.get('lq_path') or ['?'])[0]
            raise RuntimeError(f'val.metrics.{failing} ({metrics_opt[failing].get("type")}) failed on dataset '
                               f'{dataset_name}, image {image}: {type(err).__name__}: {err}. Fix: check that metric\'s '
                               'options, or remove it from val.metrics for this dataset.') from err

    def _shard(self, dataloader):
        """(dataset, this rank's batches (indices rank::world_size), their count): the sums are reduced afterwards,
        so all ranks agree."""
        dataset = dataloader.dataset
        rank, world = self.opt['rank'], self.opt['world_size']
        batches = ((idx, default_collate([dataset[idx]])) for idx in range(rank, len(dataset), world))
        return dataset, batches, math.ceil(len(dataset) / world)

    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """BasicSR's entry point: :meth:`validation` when distributed."""
        self._validate(*self._shard(dataloader), current_iter, tb_logger, save_img, self.validation_flags())

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """BasicSR's entry point: :meth:`validation` in one process."""
        self._validate(dataloader.dataset, enumerate(dataloader), len(dataloader), current_iter, tb_logger, save_img,
                       self.validation_flags())

    def _validate(self, dataset, batches, num_batches, current_iter, tb_logger, save_img, flags):
        dataset_name = dataset.opt['name']
        val_opt = self.opt['val']
        metrics_opt = val_opt.get('metrics') or {}
        with_metrics = bool(metrics_opt)
        if with_metrics:
            self._initialize_best_metric_results(dataset_name)
        accumulator = HeadMetricAccumulator(metrics_opt, self.num_outputs)
        save_all = val_opt.get('save_all_heads', False)
        first_metric = next(iter(metrics_opt), None)
        pbar = tqdm(total=num_batches, unit='image') if val_opt.get('pbar', False) and self.opt['rank'] == 0 else None
        for _, val_data in batches:
            self.feed_data(val_data, is_val=True)
            self.test()
            heads = self.heads_output()
            scores = {}
            if with_metrics and hasattr(self, 'gt'):
                scores = self._named_head_scores(heads, metrics_opt, flags, dataset_name, val_data)
                accumulator.add(scores)
            if save_img:
                self._save_images(val_data, heads, scores.get(first_metric), metrics_opt.get(first_metric), save_all,
                                  dataset_name, current_iter, flags['rgb2bgr'])
            del self.lq, self.output
            if hasattr(self, 'gt'):
                del self.gt
            if pbar is not None:
                pbar.update(1)
        if pbar is not None:
            pbar.close()
        if with_metrics:
            if self.opt.get('dist'):
                accumulator.all_reduce(self.device)
            if accumulator.count == 0:
                get_root_logger().warning(f'Validation {dataset_name}: no image had a ground truth; no metrics.')
                return
            self.metric_results = accumulator.results()
            self.best_head = accumulator.best_head(first_metric)
            for name in metrics_opt:
                self._update_best_metric_result(dataset_name, name, self.metric_results[name], current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)

    def _save_images(self, val_data, heads, first_scores, first_opt, save_all, dataset_name, current_iter, rgb2bgr):
        """Save each image's best head (per-image best by the first metric; the recorded best head without GT)."""
        higher = (first_opt or {}).get('better', 'higher') == 'higher'
        for b in range(heads.shape[0]):
            img_name = osp.splitext(osp.basename(val_data['lq_path'][b]))[0]
            if first_scores is not None:
                row = first_scores[b]
                best = int(torch.argmax(row) if higher else torch.argmin(row))
            else:
                best = self.best_head
            picks = range(heads.shape[1]) if save_all else [best]
            for k in picks:
                suffix = '' if not save_all else f'_h{k}'
                image = tensor2img(heads[b, k].detach().cpu(), rgb2bgr=rgb2bgr)
                imwrite(image, self._image_path(dataset_name, img_name, current_iter, suffix))

    def _image_path(self, dataset_name, img_name, current_iter, suffix):
        vis = self.opt['path']['visualization']
        if self.opt['is_train']:
            return osp.join(vis, img_name, f'{img_name}_{current_iter}{suffix}.png')
        tag = self.opt['val'].get('suffix') or self.opt['name']
        return osp.join(vis, dataset_name, f'{img_name}_{tag}{suffix}.png')

    def _log_validation_metric_values(self, current_iter, dataset_name, tb_logger):
        lines = [f'Validation {dataset_name}']
        best = getattr(self, 'best_metric_results', {}).get(dataset_name, {})
        for metric, value in self.metric_results.items():
            line = f'\t # {metric}: {value:.4f}'
            if metric in best:
                line += f'\tBest: {best[metric]["val"]:.4f} @ {best[metric]["iter"]} iter'
            if metric == 'best_head' and self.num_outputs > 1:
                line += f'\t({head_pair_name(int(value), self.num_heads, self.combine)})'
            lines.append(line)
        get_root_logger().info('\n'.join(lines) + '\n')
        if tb_logger:
            for metric, value in self.metric_results.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{metric}', value, current_iter)
