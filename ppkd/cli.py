"""What the command-line shells share: flags, and turning bad input into
one line on stderr and a non-zero exit."""
import argparse
import functools
import sys

from ppkd.errors import PPKDError


def train_parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument('-c', '--config', required=True, help='model config (YAML)')
    p.add_argument('-o', '--opt', nargs='*', default=[], help='config overrides, key=value')
    p.add_argument('--eval', action='store_true', help='evaluate every snapshot, keep best_model')
    p.add_argument('-r', '--resume', default=None, help='checkpoint prefix to resume from')
    p.add_argument('--output_dir', default=None, help='where checkpoints go (default save_dir/<config name>)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--to_static', action='store_true', help='compile the training step with paddle.jit.to_static')
    p.add_argument('--amp', action='store_true', help='mixed precision (float16 autocast, loss scaling; GPU only)')
    p.add_argument('--use_vdl', action='store_true', help='also log every loss term, the learning rate, images/s '
                   'and each evaluation to VisualDL')
    p.add_argument('--vdl_log_dir', default=None, help='VisualDL log folder (default: OUTPUT_DIR/vdl)')
    return p


def add_teacher_arguments(p):
    """The teacher's flags (distill.py, train_autoencoder.py)."""
    p.add_argument('-t', '--teacher_config', required=True, help='teacher config (YAML)')
    p.add_argument('--teacher_pretrained', required=True, help='teacher weights (.pdparams)')
    p.add_argument('--teacher_opt', nargs='*', default=[], help='teacher config overrides, key=value')
    return p


def main_guard(fn):
    """Run `fn`; a PPKDError becomes `error: ...` on stderr and exit 2 (an
    OSError too, as its path and reason), Ctrl-C one line and exit 130 (checkpoints are written whole or not at
    all, so the last complete one stays)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PPKDError as e:
            print(f'error: {e}', file=sys.stderr)
            sys.exit(e.exit_code)
        except OSError as e:
            # An output folder whose parent is a file, a read-only folder, a full disk: the path and the reason.
            where = f'{e.filename}: ' if e.filename else ''
            print(f'error: {where}{e.strerror or e}', file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print('error: interrupted (Ctrl-C); the last complete checkpoint is kept', file=sys.stderr)
            sys.exit(130)
    return wrapper
