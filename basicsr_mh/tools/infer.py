"""``basicsr-mh infer``: deblur a folder (or one image) with a multi-head model, no ground truth needed.

Every readable image of ``--input`` (a file, or the files of a folder, not recursive) is restored at its own size
(padding as the backbone needs; tiles with blended overlaps above ``--tile``) and written as PNG to ``--output``:
``<stem>.png`` for one head or a selection rule (:mod:`basicsr_mh.tools.selection`), ``<stem>_h<k>.png`` for
``--heads all``. Input files are only read: ``--output`` may not be the input's folder; nothing is written outside
``--output`` or through a symbolic link, and an image whose header claims more than ``--max-pixels`` is skipped
before it is decoded (:mod:`basicsr_mh.tools.guards`). Grayscale images run through a 3-channel network replicated
to RGB and are written gray; a 1-channel network restores colour images channel by channel. 16-bit inputs give 16-bit
PNGs. Unreadable files are reported by name and skipped.
"""
import csv
import cv2
import io
import numpy as np
import os
import torch
from tqdm import tqdm

from basicsr_mh.acceleration import Acceleration
from basicsr_mh.archs.tail_probe import find_in_channels
from basicsr_mh.inference import InferenceRunner
from basicsr_mh_cli.parsers import infer_parser
from .common import MEAN_HEAD, ToolError, head_name, head_pairs, load_model, parse_head, read_options, run_tool
from .guards import output_file, oversized_image, write_atomic
from .selection import SCORED_RULES, select


def list_inputs(path):
    """The files to read: ``[path]`` for a file, the folder's files (sorted, not hidden, not recursive)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f'--input "{path}" is neither a file nor a folder.')
    names = sorted(n for n in os.listdir(path) if not n.startswith('.') and os.path.isfile(os.path.join(path, n)))
    return [os.path.join(path, n) for n in names]


def read_image(path):
    """Read an image as ``(float32 array (H, W, C) RGB or (H, W, 1) gray in [0, 1], bit depth 8 or 16)``.

    Returns None when the file cannot be decoded (not an image, truncated, ...).
    """
    try:
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if img is None or img.size == 0:
        return None
    if img.dtype == np.uint8:
        depth, img = 8, img.astype(np.float32) / 255.
    elif img.dtype == np.uint16:
        depth, img = 16, img.astype(np.float32) / 65535.
    elif img.dtype in (np.float32, np.float64):
        depth, img = 16, np.clip(img.astype(np.float32), 0, 1)
    else:
        return None
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] == 4:
        img = img[..., :3]
    if img.shape[2] == 3:
        img = img[..., ::-1]  # BGR -> RGB (BasicSR trains on RGB tensors)
    elif img.shape[2] != 1:
        return None
    return np.ascontiguousarray(img), depth


def to_network_input(img, in_channels):
    """(H, W, C) image -> ``(x (B, in_channels, H, W), mode)``; mode says how to undo it (:func:`from_heads`)."""
    x = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0)
    channels = x.shape[1]
    if channels == in_channels:
        return x, 'same'
    if channels == 1 and in_channels == 3:
        return x.repeat(1, 3, 1, 1), 'gray_as_rgb'
    if in_channels == 1:
        return x.transpose(0, 1), 'per_channel'  # (C, 1, H, W): each channel on its own
    raise ToolError(f'the network reads {in_channels}-channel images; this image has {channels} channels.')


def from_heads(out, mode):
    """Network output (B, K', C_out, H, W) -> the image's heads (K', C, H, W), undoing :func:`to_network_input`."""
    if mode == 'per_channel':
        return out[:, :, 0].transpose(0, 1)
    heads = out[0]
    if mode == 'gray_as_rgb' and heads.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        heads = (heads * w).sum(dim=1, keepdim=True)
    return heads


def write_image(path, img, depth=8):
    """Write (C, H, W) float RGB/gray in [0, 1] as PNG (rounded as BasicSR's ``tensor2img``), atomically and never
    through a symbolic link (:func:`basicsr_mh.tools.guards.write_atomic`)."""
    arr = img.detach().float().clamp(0, 1).permute(1, 2, 0).numpy()
    peak, dtype = (65535., np.uint16) if depth == 16 else (255., np.uint8)
    arr = (arr * peak).round().astype(dtype)
    arr = arr[..., 0] if arr.shape[2] == 1 else np.ascontiguousarray(arr[..., ::-1])
    ok, encoded = cv2.imencode('.png', arr)
    if not ok:
        raise OSError(f'cannot encode "{path}" as PNG.')
    write_atomic(path, encoded.tobytes())


def output_stems(files):
    """Unique output stems: the file's stem, or its name with dots replaced where two files share a stem."""
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    return [s if stems.count(s) == 1 else os.path.basename(f).replace('.', '_') for s, f in zip(stems, files)]


def output_names(stems, heads_spec, indices, select_rule):
    """Every file name infer will write into ``--output``: ``<stem>.png`` or ``<stem>_h<k>.png``, and
    ``selection.csv`` with ``--select``."""
    if heads_spec == 'all' and not select_rule:
        names = [f'{stem}_h{k}.png' for stem in stems for k in indices]
    else:
        names = [f'{stem}.png' for stem in stems]
    return names + (['selection.csv'] if select_rule else [])


def check_output(input_path, output_dir):
    """Refuse an output folder that is the input folder (outputs could replace inputs)."""
    in_dir = input_path if os.path.isdir(input_path) else os.path.dirname(os.path.abspath(input_path))
    if os.path.realpath(in_dir) == os.path.realpath(output_dir):
        raise ToolError(f'--output "{output_dir}" is the input folder; infer never writes next to its inputs. Fix: '
                        'choose another folder.')
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise FileExistsError(f'--output "{output_dir}" exists and is not a folder.')


def pick_device(name):
    if name is None:
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise ToolError('--device cuda: no CUDA device is available. Fix: --device cpu.')
    return name


def _run(args):
    if args.select and args.heads:
        raise ToolError('--heads and --select exclude each other: --select picks one head per image.')
    check_output(args.input, args.output)
    device = pick_device(args.device)
    if args.amp == 'fp16' and torch.device(device).type != 'cuda':
        raise ToolError(f'--amp fp16 needs a CUDA device; --device is {device}. Fix: --amp bf16, or leave --amp out.')
    files = list_inputs(args.input)
    if not files:
        raise ToolError(f'--input "{args.input}" holds no files.')
    opt = read_options(args.opt, args.imports)
    net, net_opt, checkpoint, _, ckpt = load_model(opt, args.ckpt, args.param_key, args.trust_checkpoint)
    num_outputs = len(head_pairs(net))
    heads_spec = args.heads or 'best'
    if args.select:
        indices = []  # one image per input, chosen by the rule
    else:
        indices = list(range(num_outputs)) if heads_spec == 'all' else [parse_head(heads_spec, net, checkpoint)]
    backbone_opt = net_opt.get('backbone') if net_opt.get('type') == 'MultiHeadArch' else net_opt
    in_channels = net_opt.get('probe_channels') or find_in_channels(backbone_opt, getattr(net, 'backbone', net))
    window = (opt.get('val') or {}).get('window_size')
    with_scores = args.select in SCORED_RULES
    if with_scores and not getattr(net, 'head_scores', False):
        raise ToolError(f'--select {args.select} needs a model trained with network_g.head_scores: true (this one has '
                        'no score branch). Fix: --select consensus, mean or sharpness.')
    acceleration = Acceleration.from_options({'amp': args.amp, 'channels_last': args.channels_last}, device, 'infer')
    runner = InferenceRunner.for_images(net, device, args.tile, args.tile_overlap, window, with_scores, acceleration)
    stems = output_stems(files)
    for name in output_names(stems, heads_spec, indices, args.select):  # every name checked before any work
        output_file(args.output, name)
    os.makedirs(args.output, exist_ok=True)
    skipped, done, choices = [], 0, []
    for path, stem in tqdm(list(zip(files, stems)), unit='img', disable=args.quiet, desc='infer'):
        too_big = oversized_image(path, args.max_pixels)
        if too_big:
            skipped.append(os.path.basename(path))
            tqdm.write(f'skipped {os.path.basename(path)}: {too_big}')
            continue
        read = read_image(path)
        if read is None:
            skipped.append(os.path.basename(path))
            tqdm.write(f'skipped {os.path.basename(path)}: not a readable image')
            continue
        img, depth = read
        x, mode = to_network_input(img, in_channels)
        scores = None
        if with_scores:
            out, scores = runner(x)
            heads, scores = from_heads(out, mode), scores.mean(dim=0)  # per-channel runs: their mean
        else:
            heads = from_heads(runner(x), mode)
        if args.select:
            index, chosen = select(heads, args.select, scores)
            write_image(output_file(args.output, f'{stem}.png'), chosen, depth)
            mixture = 'mean' if args.select == 'mean' else args.select
            choices.append((os.path.basename(path), args.select, mixture if index < 0 else head_name(net, index)))
        elif heads_spec == 'all':
            for k in indices:
                write_image(output_file(args.output, f'{stem}_h{k}.png'), heads[k], depth)
        else:
            image = heads.mean(dim=0) if indices[0] == MEAN_HEAD else heads[indices[0]]
            write_image(output_file(args.output, f'{stem}.png'), image, depth)
        done += 1
    if choices:
        table = io.StringIO(newline='')
        writer = csv.writer(table)
        writer.writerow(['image', 'rule', 'head'])
        writer.writerows(choices)
        write_atomic(output_file(args.output, 'selection.csv'), table.getvalue().encode('utf-8'))
    what = f'--select {args.select}' if args.select else (
        'all heads' if heads_spec == 'all' else f'head {head_name(net, indices[0])}')
    print(f'Deblurred {done} image(s) with {ckpt} ({what}) into {args.output}.')
    if skipped:
        print(f'Skipped {len(skipped)} unreadable or oversized file(s): {", ".join(skipped)}')
    return 0 if done else 1


def run(args, prog='basicsr-mh infer'):
    """``basicsr-mh infer`` with parsed arguments (:func:`basicsr_mh_cli.parsers.infer_parser`); returns the exit code
    (0; 1 when nothing could be read or on a one-line error)."""
    return run_tool(prog, _run, args)


def main(argv=None, prog='basicsr-mh infer'):
    """Command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    return run(infer_parser(prog).parse_args(argv), prog)
