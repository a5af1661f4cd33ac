"""Eq. 7a / 7b bookkeeping of validation results, checked against hand-computed numbers."""
import pytest
import torch

from basicsr_mh.models.validation import HeadMetricAccumulator


def test_eq7_from_known_scores():
    opts = {'psnr': {'type': 'calculate_psnr'}, 'niqe': {'type': 'calculate_niqe', 'better': 'lower'}}
    acc = HeadMetricAccumulator(opts, 3)
    psnr = torch.tensor([[30., 32., 31.], [28., 27., 29.], [35., 33., 34.]])
    niqe = torch.tensor([[5., 4., 6.], [3., 7., 2.], [4., 4., 4.]])
    acc.add({'psnr': psnr[:2], 'niqe': niqe[:2]})
    acc.add({'psnr': psnr[2:], 'niqe': niqe[2:]})
    res = acc.results()
    means = psnr.mean(0)
    assert res['psnr'] == pytest.approx(float(means.max()))  # Eq. 7b
    assert res['psnr_overall'] == pytest.approx(float(psnr.max(1)[0].mean()))  # Eq. 7a
    assert res['psnr_worst'] == pytest.approx(float(psnr.min(1)[0].mean()))
    for k in range(3):
        assert res[f'psnr_h{k}'] == pytest.approx(float(means[k]))
    assert res['best_head'] == int(means.argmax())
    # lower is better: best head is the smallest mean, overall the per-image minimum
    assert res['niqe'] == pytest.approx(float(niqe.mean(0).min()))
    assert res['niqe_overall'] == pytest.approx(float(niqe.min(1)[0].mean()))
    assert res['niqe_worst'] == pytest.approx(float(niqe.max(1)[0].mean()))
    assert list(res)[:2] == ['psnr', 'niqe']


def test_single_head_reports_only_the_metric():
    acc = HeadMetricAccumulator({'psnr': {}}, 1)
    acc.add({'psnr': torch.tensor([[20.], [22.]])})
    assert acc.results() == {'psnr': pytest.approx(21.0)}
