"""The ``basicsr-mh`` and ``basicsr`` console scripts.

``basicsr-mh train -opt X.yml [--launcher pytorch] [--auto_resume] [--debug] [--force_yml k:v=x ...]``
``basicsr-mh test  -opt X.yml``
"""
import os
import sys

USAGE = """usage: {prog} <command> [options]

commands:
  train   -opt OPTIONS.yml [--launcher none|pytorch|slurm] [--auto_resume] [--debug] [--force_yml key:sub=value ...]
  test    -opt OPTIONS.yml [--launcher ...] [--force_yml ...]
  make-data --out DIR [--num-train N --num-val N --size S --seed S --lmdb ...]
          GoPro-style blurred/sharp pairs from the photos bundled with scikit-image
  demo    [--out DIR] [--iters N] [--quick]
          data + a small single-head and MH-C NAFNet trained on the CPU + DIR/report.md (about 5-7 minutes)
  export  --opt TRAIN.yml --ckpt X.pth --head best|N|i+j --out PLAIN.pth
          one head as a plain backbone checkpoint (the stock architecture loads it, strict)
  infer   --opt X.yml [--ckpt X.pth] --input DIR_OR_FILE --output DIR [--heads best|all|N] [--select RULE]
          deblur images of any size (tiles above --tile 512); RULE: consensus, mean, sharpness
  analyze --opt TEST.yml [--out DIR] [--max-images N]
          residual heatmaps between heads, pairwise-head PSNR matrix, win rates, selection rules vs oracle

`{prog} <command> -h` shows a command's options. Folders experiments/, tb_logger/ and results/ are created in the
current directory. For several processes: torchrun --nproc_per_node=N -m basicsr_mh.train -opt ... --launcher pytorch
"""


def main(argv=None):
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a command; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'basicsr-mh'
    if not argv or argv[0] in ('-h', '--help', 'help'):
        print(USAGE.format(prog=prog))
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == 'train':
        from .train import train_pipeline
        train_pipeline(os.getcwd(), rest)
        return 0
    if command == 'test':
        from .test import test_pipeline
        test_pipeline(os.getcwd(), rest)
        return 0
    if command == 'make-data':
        from .data.gopro_synth import main as make_data_main
        return make_data_main(rest, prog=f'{prog} make-data')
    if command in ('export', 'infer', 'analyze'):
        import importlib
        tool = importlib.import_module(f'.tools.{command}', __package__)
        return tool.main(rest, prog=f'{prog} {command}')
    if command == 'demo':
        from .demo import main as demo_main
        return demo_main(rest, prog=f'{prog} demo')
    print(f'{prog}: unknown command "{command}".\n' + USAGE.format(prog=prog), file=sys.stderr)
    return 2


def entry():
    """Console-script entry: exit with :func:`main`'s code; option errors print one clear line, no traceback."""
    try:
        code = main()
    except (ValueError, FileNotFoundError, KeyError) as err:
        if os.environ.get('BASICSR_MH_TRACEBACK'):
            raise
        print(f'basicsr-mh: error: {err}', file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == '__main__':
    entry()
