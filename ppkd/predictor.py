"""Export and inference go through ppdet's own Trainer in test mode: the
formats and drawings PaddleDetection users already deploy."""
import contextlib

from ppdet.engine import Trainer as PPDetTrainer

from ppkd import config as cfgmod
from ppkd.engine.trainer import setup_run
from ppkd.errors import PPKDError
from ppkd.teacher import load_weights


@contextlib.contextmanager
def ppdet_trainer(config_path, overrides):
    """A ppdet Trainer (mode 'test') for the config, with `weights` loaded
    strictly, the config active for ppdet's `create` calls inside."""
    cfg = cfgmod.load_config(config_path, overrides)
    if cfg.get('task') == 'segmentation':
        raise PPKDError(f'{config_path}: export and inference here are for detectors; a segmenter\'s .pdparams is a '
                        'plain PaddleSeg state dict: export it with PaddleSeg\'s tools/export.py --model_path')
    if not cfg.get('weights'):
        raise PPKDError('no weights given: pass -o weights=PATH')
    setup_run(cfg)
    with cfgmod.active(cfg):
        trainer = PPDetTrainer(cfg, mode='test')
        load_weights(trainer.model, cfg['weights'], role=f'model ({config_path})')
        yield trainer
