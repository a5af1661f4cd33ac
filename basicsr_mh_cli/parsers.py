"""The argument parsers of every ``basicsr-mh`` command, importable without torch or BasicSR.

Kept apart from :mod:`basicsr_mh` (whose import registers the networks, hence imports torch) so that ``--help`` and
argument errors answer at once. The commands' modules build their parsers here; the names a parser offers
(:data:`SELECTION_RULES`, ...) are defined here and imported by the code that implements them.
"""
import argparse
import os

#: ``infer`` / ``analyze --select`` rules that need no ground truth (implemented in ``basicsr_mh.tools.selection``).
SELECTION_RULES = ('consensus', 'mean', 'sharpness', 'scores', 'scored-mean')
#: The rules that read the learned head scores (``network_g.head_scores: true``).
SCORED_RULES = ('scores', 'scored-mean')
#: ``infer --max-pixels`` default: images whose header claims more pixels are skipped before decoding.
DEFAULT_MAX_PIXELS = 100_000_000
#: ``make-data`` defaults; equal to ``SynthConfig()`` / ``TrajectoryConfig()`` of ``basicsr_mh.data`` (tested).
MAKE_DATA_DEFAULTS = dict(
    frames_min=7,
    frames_max=13,
    gamma=2.2,
    speed_min=0.5,
    speed_max=2.0,
    accel_max=0.1,
    jitter_std=0.3,
    rot_speed_std=0.05)


def train_test_parser(prog, is_train):
    """``basicsr-mh train`` / ``test``: BasicSR's flags."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=('Train' if is_train else 'Test') + ' a BasicSR model (multi-head aware) from an option YAML file.')
    parser.add_argument('-opt', type=str, required=True, help='Path to option YAML file.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher')
    parser.add_argument('--auto_resume', action='store_true', help='resume from the latest training state')
    parser.add_argument('--debug', action='store_true', help='debug mode: name prefixed debug_, frequent logs')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    add_import_argument(parser)
    parser.add_argument(
        '--force_yml',
        nargs='+',
        default=None,
        metavar='KEY:SUB=VALUE',
        help='override options, e.g. train:ema_decay=0.999 network_g:num_heads=2')
    return parser


def add_import_argument(parser):
    """Add ``--import MODULE`` (repeatable): modules of the user's code that register archs, models, losses or
    datasets, imported before the option file is read (as its ``imports:`` list)."""
    parser.add_argument(
        '--import',
        dest='imports',
        action='append',
        default=[],
        metavar='MODULE',
        help='import this module first (your package registering archs/models/losses/datasets into BasicSR); '
        'repeatable; the current directory is searched first, as with python -m')


def add_trust_argument(parser):
    """Add ``--trust-checkpoint``: load a checkpoint that needs more than ``weights_only=True`` (can run code)."""
    parser.add_argument(
        '--trust-checkpoint',
        action='store_true',
        help='load a checkpoint that holds pickled objects beyond tensors and plain containers (this can run code '
        'from the file: only for files from a source you trust; path.trust_checkpoint: true does the same)')


def add_model_arguments(parser, opt_help):
    """Add the ``--opt`` / ``--ckpt`` / ``--param-key`` / ``--trust-checkpoint`` flags of ``infer`` and ``analyze``."""
    parser.add_argument('--opt', required=True, help=opt_help)
    parser.add_argument('--ckpt', help='checkpoint (default: path.pretrain_network_g of --opt)')
    parser.add_argument(
        '--param-key', help='checkpoint entry (default: path.param_key_g, else params_ema when present, else params)')
    add_trust_argument(parser)
    add_import_argument(parser)


def export_parser(prog=None):
    """``basicsr-mh export``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description='Write one head of a multi-head checkpoint as a plain backbone checkpoint (BasicSR layout) that '
        'the stock architecture loads with strict=True; a combined head i+j is exact (averaged output-layer blocks).')
    parser.add_argument('--ckpt', help='multi-head checkpoint (default: path.pretrain_network_g of --opt)')
    parser.add_argument('--opt', required=True, help='the option file the checkpoint was trained with')
    parser.add_argument(
        '--head',
        default='best',
        help='best (multihead.best_head of the checkpoint), mean (the average of all heads: the backbone\'s own '
        'output path), an extended head N (3 or h3), or a pair i+j (default: best)')
    parser.add_argument('--out', required=True, help='output .pth (never overwritten)')
    parser.add_argument('--no-verify', action='store_true', help='skip the probe comparison with the multi-head net')
    add_trust_argument(parser)
    add_import_argument(parser)
    return parser


def infer_parser(prog=None):
    """``basicsr-mh infer``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description='Deblur images of any size with a (multi-head) model; write PNGs to --output. Heads: the '
        'checkpoint\'s best head, all heads, one head, or a per-image selection rule that needs no ground truth.')
    add_model_arguments(parser, 'test or train option file (network_g; path.pretrain_network_g unless --ckpt)')
    parser.add_argument('--input', required=True, help='an image or a folder of images')
    parser.add_argument('--output', required=True, help='output folder (created; never the input folder)')
    parser.add_argument(
        '--heads',
        help='best (default; multihead.best_head), mean (the average of all heads), all (K\' files per image), or '
        'one head N / hN / i+j')
    parser.add_argument(
        '--select',
        choices=SELECTION_RULES,
        help='pick per image: consensus (medoid head), mean (average of the heads), sharpness (highest Laplacian '
        'variance), scores (the top-scored head) or scored-mean (per pixel, the heads weighted by their scores); '
        'the last two need network_g.head_scores: true')
    parser.add_argument(
        '--tile', type=int, default=512, help='tile larger images into tiles of this side; 0: never (default 512)')
    parser.add_argument('--tile-overlap', type=int, default=32, help='overlap of tiles, blended (default 32)')
    parser.add_argument(
        '--max-pixels',
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help='skip images whose header claims more pixels, before decoding them (default '
        f'{DEFAULT_MAX_PIXELS:,}; 0: no limit)')
    parser.add_argument('--device', help='cpu, cuda, cuda:1 (default: cuda when available)')
    parser.add_argument(
        '--amp',
        choices=['bf16', 'fp16'],
        help='run the network under autocast to bfloat16 (CPU, recent GPUs) or float16 (CUDA); outputs, selection '
        'and the written images are computed in FP32 (default: FP32)')
    parser.add_argument(
        '--channels-last', action='store_true', help='network and inputs in channels_last (NHWC) memory format')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser


def analyze_parser(prog=None):
    """``basicsr-mh analyze``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description='On the validation/test set of an option file: residual heatmaps between heads (Fig. 3/4), the '
        'pairwise-head PSNR matrix (Fig. 6), head win rates, and selection rules vs the oracle (Eq. 7a/7b).')
    add_model_arguments(
        parser, 'test option file (network_g, datasets with GT, path.pretrain_network_g unless --ckpt, val.metrics)')
    parser.add_argument('--out', help='output folder (default: results/<name>/analysis)')
    parser.add_argument('--dataset', help='dataset key or name (default: the first that is not train)')
    parser.add_argument('--max-images', type=int, help='analyze the first N images only')
    parser.add_argument(
        '--pair',
        help='base-head pair i,j for the signed-difference maps (default: per image the pair that differs most)')
    parser.add_argument(
        '--tile',
        type=int,
        default=0,
        help='tile images larger than this (default 0: whole images, as BasicSR '
        'validation)')
    parser.add_argument('--tile-overlap', type=int, default=32)
    parser.add_argument('--device', help='cpu, cuda (default: cuda when available)')
    parser.add_argument('--quiet', action='store_true')
    return parser


def demo_parser(prog='basicsr-mh demo'):
    """``basicsr-mh demo``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description='Make the quick start\'s data, train a small single-head and MH-C NAFNet on the CPU and '
        'write a report (per-head table, validation curve, pictures). Default: about 5 minutes on 2 CPU cores.')
    parser.add_argument(
        '--out',
        default='basicsr_mh_demo',
        help='output folder; must not exist or be empty (default: ./basicsr_mh_demo)')
    parser.add_argument(
        '--iters', type=int, default=None, help='training iterations per model (default: 2500; 20 with --quick)')
    parser.add_argument('--quick', action='store_true', help='tiny run for tests (width 8, 20 iterations, seconds)')
    parser.add_argument('--seed', type=int, default=10, help='seed of the data and of both trainings')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: the idle cores)')
    parser.add_argument('--verbose', action='store_true', help="show BasicSR's training log on the console")
    return parser


def make_data_parser(prog=None):
    """``basicsr-mh make-data`` (``python -m basicsr_mh.data.gopro_synth``)."""
    d = MAKE_DATA_DEFAULTS
    parser = argparse.ArgumentParser(
        prog=prog,
        description='Make GoPro-style blurred/sharp pairs (BasicSR PairedImageDataset layout) from the '
        'real photos bundled with scikit-image: a burst of N frames (7..13) of a randomly moving camera is averaged '
        'in linear light (inverse gamma-2.2 CRF), then the CRF; the label is the middle frame N // 2.')
    parser.add_argument(
        '--out',
        default='datasets/gopro_synth',
        help='output folder; refused if it exists and is not empty (default: %(default)s)')
    parser.add_argument('--num-train', type=int, default=96, help='training pairs (default: %(default)s)')
    parser.add_argument('--num-val', type=int, default=12, help='validation pairs (default: %(default)s)')
    parser.add_argument('--size', type=int, default=128, help='pair height = width in px (default: %(default)s)')
    parser.add_argument('--frames-min', type=int, default=d['frames_min'], help='fewest frames per blur (default: 7)')
    parser.add_argument('--frames-max', type=int, default=d['frames_max'], help='most frames per blur (default: 13)')
    parser.add_argument(
        '--subframes',
        type=int,
        default=0,
        help='odd sub-frames per frame for a smooth blur; 0 = auto (<= 1 px apart), 1 = GoPro\'s plain frame average '
        '(default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='same seed -> identical files (default: %(default)s)')
    parser.add_argument('--lmdb', action='store_true', help='write {gt,lq}.lmdb instead of PNG folders')
    parser.add_argument(
        '--workers',
        type=int,
        default=min(2,
                    os.cpu_count() or 1),
        help='threads; the output does not depend on it (default: %(default)s)')
    parser.add_argument(
        '--crf',
        choices=('gamma', 'srgb', 'linear'),
        default='gamma',
        help='camera response function (default: %(default)s)')
    parser.add_argument('--gamma', type=float, default=d['gamma'], help='gamma of the gamma CRF (default: 2.2)')
    parser.add_argument('--speed-min', type=float, default=d['speed_min'], help='px/frame (default: %(default)s)')
    parser.add_argument('--speed-max', type=float, default=d['speed_max'], help='px/frame (default: %(default)s)')
    parser.add_argument('--accel-max', type=float, default=d['accel_max'], help='px/frame^2 (default: %(default)s)')
    parser.add_argument(
        '--jitter',
        type=float,
        default=d['jitter_std'],
        help='hand-jitter random walk, px per frame (default: %(default)s)')
    parser.add_argument(
        '--rot-speed',
        type=float,
        default=d['rot_speed_std'],
        help='std of the roll speed, deg/frame (default: %(default)s)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser
