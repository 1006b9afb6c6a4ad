"""Detection through ppdet: its models return their loss dict in training,
its readers, learning rates and optimizers come from the config."""
import contextlib
import copy
import itertools
import json
import random

import numpy as np

from ppkd import config as cfgmod
from ppkd.data.loader import build_reader, build_unlabeled_reader, epoch_batches
from ppkd.engine.evaluator import evaluate
from ppkd.teacher import TEACHER_FORWARDS, TEACHER_TAILS
from ppkd.teacher_cache import random_transforms


@contextlib.contextmanager
def _random_state_kept():
    """Readers drawn on the side leave the training's random streams as they
    were: a multiprocess loader draws its workers' seed from numpy's, and
    transforms run in this process (worker_num 0) draw from numpy's and
    Python's — else int8's calibration would change the student's
    augmentations from the next epoch on."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


class DetectionTask:
    metric = 'mAP'
    # the student's own loss, beside the distillation terms
    own_loss_key = 'det_loss'

    def __init__(self, cfg):
        self.cfg = cfg

    def build_model(self):
        from ppkd.builder import build_model
        return build_model(self.cfg)

    @staticmethod
    def student_loss(model, batch):
        return dict(model(batch))

    @staticmethod
    def images(batch):
        return batch['image']

    @staticmethod
    def image_ids(batch):
        """The dataset's id of each image in `batch` (None: the batch has none)."""
        return None if 'im_id' not in batch else [int(i) for i in batch['im_id'].numpy().reshape(-1)]

    def random_transforms(self):
        """What makes the training images differ between epochs (empty: nothing)."""
        return random_transforms(self.cfg)

    @staticmethod
    def teacher_forwards(teacher):
        return TEACHER_FORWARDS.get(type(teacher).__name__)

    @staticmethod
    def teacher_tail(teacher):
        return TEACHER_TAILS.get(type(teacher).__name__)

    def class_names(self):
        return cfgmod.label_names(self.cfg, 'TrainDataset')

    def train_reader(self):
        return build_reader(self.cfg, 'Train')

    def eval_reader(self, limit=None):
        """The whole test set, or its first `limit` images."""
        reader = build_reader(self.cfg, 'Eval')
        if limit is not None:
            reader.dataset.roidbs = reader.dataset.roidbs[:limit]
        return reader

    def calibration_images(self, limit):
        """The image batches of the first `limit` training images through
        the test transform (no augmentation): what int8's scales are
        measured on (`ppkd.compiled_teacher`). [] without a config."""
        if self.cfg is None:
            return []
        with _random_state_kept():
            # A copy: the reader sets its transform on the data set it reads.
            reader = build_reader(self.cfg, 'Eval', dataset=copy.deepcopy(self.cfg['TrainDataset']))
            reader.dataset.roidbs = reader.dataset.roidbs[:limit]
            return [batch['image'] for batch in epoch_batches(reader)]

    def training_images(self, batches, epoch=0):
        """The image batches of `batches` training batches of `epoch` as the
        student sees them (augmented): where int8 is checked too. [] without
        a config."""
        if self.cfg is None:
            return []
        with _random_state_kept():
            reader = build_reader(self.cfg, 'Train', dataset=copy.deepcopy(self.cfg['TrainDataset']))
            return [batch['image'] for batch in itertools.islice(epoch_batches(reader, epoch), batches)]

    @staticmethod
    def batches(reader, epoch=0):
        return epoch_batches(reader, epoch)

    def schedule(self, steps_per_epoch):
        epochs = int(self.cfg['epoch'])
        return epochs, epochs * steps_per_epoch

    def lr_and_optimizer(self, steps_per_epoch, model):
        lr = cfgmod.build(self.cfg, 'LearningRate')(steps_per_epoch)
        return lr, cfgmod.build(self.cfg, 'OptimizerBuilder')(lr, model)

    def unlabeled_reader(self):
        return build_unlabeled_reader(self.cfg)

    @staticmethod
    def batch_size(batch):
        return len(batch['image'])

    def evaluate(self, model, reader=None):
        return evaluate(self.cfg, model, reader)

    def describe(self, result):
        return (f'mAP(0.50, {self.cfg.get("map_type", "11point")}) = {result["mAP"]:.2f}% over {result["images"]} '
                f'images  per class: {json.dumps({k: round(v, 2) for k, v in result["per_class"].items()})}')
