"""VisualDL scalars of a run (`--use_vdl`): every entry the trainer records
to metrics.jsonl also goes to a VisualDL log, step = iteration."""
from ppkd.errors import PPKDError

# Record fields that are positions or settings, not curves.
NOT_SCALARS = ('type', 'epoch', 'iteration', 'images', 'per_class')


class VisualDLLog:
    def __init__(self, logdir):
        try:
            from visualdl import LogWriter
        except ImportError:
            raise PPKDError('--use_vdl needs visualdl: pip install visualdl==2.5.3 (make install has it)') from None
        self.logdir = logdir
        self.writer = LogWriter(logdir=logdir)

    def write(self, entry):
        """`train/<term>` for each logged term, learning rate and images/s;
        `eval/mAP` and `eval/AP/<class>` for an evaluation."""
        kind, step = entry['type'], int(entry['iteration'])
        for key, value in entry.items():
            if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f'{kind}/{key}', float(value), step)
        for name, ap in (entry.get('per_class') or {}).items():
            self.writer.add_scalar(f'{kind}/AP/{name}', float(ap), step)

    def close(self):
        self.writer.close()
