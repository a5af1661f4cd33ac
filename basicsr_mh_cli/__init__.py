"""The ``basicsr-mh`` and ``basicsr`` console scripts.

This package imports neither torch nor BasicSR: it parses the command line (so ``--help`` and argument errors answer
at once) and only then imports the command's module from :mod:`basicsr_mh`.

``basicsr-mh train -opt X.yml [--launcher pytorch] [--auto_resume] [--debug] [--force_yml k:v=x ...]``
``basicsr-mh test  -opt X.yml``
"""
import importlib
import os
import sys

from . import parsers

USAGE = """usage: {prog} <command> [options]

commands:
  train   -opt OPTIONS.yml [--launcher none|pytorch|slurm] [--auto_resume] [--debug] [--force_yml key:sub=value ...]
  test    -opt OPTIONS.yml [--launcher ...] [--force_yml ...]
  make-data --out DIR [--num-train N --num-val N --size S --seed S --lmdb ...]
          GoPro-style blurred/sharp pairs from the photos bundled with scikit-image
  demo    [--out DIR] [--iters N] [--quick]
          data + a small single-head and MH-C NAFNet trained on the CPU + DIR/report.md (about 5 minutes)
  export  --opt TRAIN.yml --ckpt X.pth --head best|mean|N|i+j --out PLAIN.pth
          one head as a plain backbone checkpoint (the stock architecture loads it, strict)
  infer   --opt X.yml [--ckpt X.pth] --input DIR_OR_FILE --output DIR [--heads best|mean|all|N] [--select RULE]
          deblur images of any size (tiles above --tile 512); RULE: {rules}
  analyze --opt TEST.yml [--out DIR] [--max-images N]
          residual heatmaps between heads, pairwise-head PSNR matrix, win rates, selection rules vs oracle

`{prog} <command> -h` shows a command's options. Folders experiments/, tb_logger/ and results/ are created in the
current directory. For several processes: torchrun --nproc_per_node=N -m basicsr_mh.train -opt ... --launcher pytorch
"""

#: command -> (parser builder, module of basicsr_mh, its function taking (args, prog) and returning the exit code)
COMMANDS = {
    'train': (lambda prog: parsers.train_test_parser(prog, True), 'basicsr_mh.train', 'run'),
    'test': (lambda prog: parsers.train_test_parser(prog, False), 'basicsr_mh.test', 'run'),
    'make-data': (parsers.make_data_parser, 'basicsr_mh.data.gopro_synth', 'run'),
    'demo': (parsers.demo_parser, 'basicsr_mh.demo', 'run'),
    'export': (parsers.export_parser, 'basicsr_mh.tools.export', 'run'),
    'infer': (parsers.infer_parser, 'basicsr_mh.tools.infer', 'run'),
    'analyze': (parsers.analyze_parser, 'basicsr_mh.tools.analyze', 'run'),
}


def main(argv=None):
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a command; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'basicsr-mh'
    usage = USAGE.format(prog=prog, rules=', '.join(parsers.SELECTION_RULES))
    if not argv or argv[0] in ('-h', '--help', 'help'):
        print(usage)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f'{prog}: unknown command "{command}".\n' + usage, file=sys.stderr)
        return 2
    build_parser, module, function = COMMANDS[command]
    args = build_parser(f'{prog} {command}').parse_args(rest)  # --help and argument errors exit here, fast
    return getattr(importlib.import_module(module), function)(args, f'{prog} {command}')


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
