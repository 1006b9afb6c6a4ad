"""From configs to models: a detector alone, or the distiller."""
import difflib
import logging
import os

import paddle

from ppdet.core.config.schema import SchemaDict
from ppdet.utils.checkpoint import load_pretrain_weight

from ppkd import config as cfgmod
from ppkd.balancing import SCHEDULE_KEYS, schedule_from_config
from ppkd.compiled_teacher import PRECISIONS
from ppkd.data.unlabeled import unlabeled_section
from ppkd.distiller import Distiller
from ppkd.errors import PPKDError
from ppkd.losses import DistillLoss
from ppkd import teacher_check
from ppkd.tasks import task_of
from ppkd.teacher import load_weights

logger = logging.getLogger('ppkd')

# The method a config gets when its `distill:` section names none.
DEFAULT_LOSSES = {'YOLOv3': ['YOLOv3L2Distill']}


def build_model(cfg):
    """The config's model: a PaddleSeg model (its `pretrained` weights
    loaded by itself), or a ppdet detector with `pretrain_weights` loaded
    if set."""
    if cfg.get('task') == 'segmentation':
        return task_of(cfg).build_model()
    model = cfgmod.build(cfg, cfg['architecture'])
    if cfg.get('pretrain_weights'):
        with cfgmod.active(cfg):
            load_pretrain_weight(model, cfg['pretrain_weights'])
    return model


def _class_names(cfg):
    """A config's class names: its test set's label list (detection), its
    training set's names (segmentation)."""
    return task_of(cfg).class_names() if cfg.get('task') == 'segmentation' else cfgmod.label_names(cfg)


def _num_classes(cfg):
    if cfg.get('task') == 'segmentation':
        return (cfg.get('model') or {}).get('num_classes')
    return cfg.get('num_classes')


def check_same_classes(student_cfg, teacher_cfg):
    if student_cfg.get('task') != teacher_cfg.get('task'):
        raise PPKDError(f'teacher {teacher_cfg["config_path"]} and student {student_cfg["config_path"]} are configs '
                        f'of different tasks ({teacher_cfg.get("task", "detection")}, '
                        f'{student_cfg.get("task", "detection")})')
    s_n, t_n = _num_classes(student_cfg), _num_classes(teacher_cfg)
    if s_n != t_n:
        raise PPKDError(f'teacher {teacher_cfg["config_path"]} has {t_n} classes, '
                        f'student {student_cfg["config_path"]} has {s_n}')
    try:
        s_names, t_names = _class_names(student_cfg), _class_names(teacher_cfg)
    except PPKDError as e:
        logger.warning('class lists not compared (%s); the reader will need them', e)
        return
    if s_names != t_names:
        raise PPKDError(f'teacher and student class lists differ: {t_names} '
                        f'({teacher_cfg["config_path"]}) vs {s_names} ({student_cfg["config_path"]})')


def _class_mapping(trained, student):
    pairs = [f'teacher channel {i} = {t!r}, student\'s = {s!r}'
             for i, (t, s) in enumerate(zip(trained, student)) if t != s]
    return '; '.join(pairs[:4]) + ('; …' if len(pairs) > 4 else '')


def check_teacher_training_classes(student_cfg, weights_path):
    """The class order the teacher's weights were trained in (recorded in
    the `.pdstate` ppkd writes beside them) against the student's label
    list: a permuted order would teach each class as another one."""
    state_path = os.path.splitext(weights_path)[0] + '.pdstate'
    trained = None
    if os.path.isfile(state_path):
        try:
            trained = (paddle.load(state_path).get('extra') or {}).get('classes')
        except Exception:  # noqa: BLE001  an unreadable state only loses this check
            trained = None
    if not trained:
        logger.info('teacher class order not checked: no class record beside %s (weights not trained by ppkd)',
                    weights_path)
        return
    try:
        student = _class_names(student_cfg)
    except PPKDError:
        return
    if list(trained) != list(student):
        how = ('the same classes in another order: ' + _class_mapping(trained, student)
               if sorted(trained) == sorted(student) else f'{list(trained)} vs the student\'s {student}')
        raise PPKDError(f'{weights_path}: the teacher was trained with {how}; write the student\'s '
                        'label_list.txt in the teacher\'s order (or retrain the teacher)')


def check_same_normalisation(student_cfg, teacher_cfg):
    """The teacher reads the student's batches: warn if it was configured
    with another image normalisation."""
    def normalise(cfg):
        ops = (cfg.get('EvalReader') or {}).get('sample_transforms') or []
        ops = ops + ((cfg.get('EvalReader') or {}).get('batch_transforms') or [])
        return next((op['NormalizeImage'] for op in ops if 'NormalizeImage' in op), None)
    s, t = normalise(student_cfg), normalise(teacher_cfg)
    if s != t:
        logger.warning('the teacher\'s config normalises images with %s, the student\'s with %s; the teacher '
                       'will see the student\'s inputs', t, s)


def distill_loss_names(cfg):
    # `use_fine_grained_loss` is the switch PaddleDetection's distill.py had.
    if cfg.get('use_fine_grained_loss'):
        return ['YOLOv3FineGrainedDistill']
    section = distill_section(cfg)
    names = section.get('losses') or DEFAULT_LOSSES.get(cfg.get('architecture'))
    if isinstance(names, str):  # `losses: YOLOv3L2Distill`, one name without brackets
        names = [names]
    if not names:
        raise PPKDError(f'{cfg["config_path"]}: no distill.losses given and no default '
                        f'for architecture {cfg.get("architecture", (cfg.get("model") or {}).get("type"))}')
    return list(names)


def _is_distill_loss(module):
    cls = getattr(module.pymodule, module.name, None)
    return isinstance(cls, type) and issubclass(cls, DistillLoss)


def build_distiller(student_cfg, teacher_cfg, teacher_weights, check_teacher=False):
    """Student and teacher merged, the teacher's weights loaded and frozen,
    with the losses the student config's `distill:` section names. With
    `check_teacher`, the teacher is first scored on the student's test
    images (`ppkd.teacher_check`)."""
    check_same_classes(student_cfg, teacher_cfg)
    segmentation = student_cfg.get('task') == 'segmentation'
    if not segmentation:
        check_same_normalisation(student_cfg, teacher_cfg)
    student = build_model(student_cfg)
    # The teacher's own pretrained backbone would be loaded and then replaced: built without it.
    teacher = (task_of(teacher_cfg).build_model() if segmentation
               else cfgmod.build(teacher_cfg, teacher_cfg['architecture']))
    path = load_weights(teacher, teacher_weights, role=f'teacher ({teacher_cfg["config_path"]})')
    check_teacher_training_classes(student_cfg, path)
    logger.info('teacher weights loaded from %s', path)
    if check_teacher:
        teacher_check.check_teacher(task_of(student_cfg), teacher, path)
    losses = []
    known = sorted(k for k, v in student_cfg.items() if isinstance(v, SchemaDict) and _is_distill_loss(v))
    for name in distill_loss_names(student_cfg):
        if name not in known:
            near = difflib.get_close_matches(str(name), known, n=1)
            hint = f'did you mean {near[0]}?' if near else f'known: {", ".join(known)}'
            raise PPKDError(f'{student_cfg["config_path"]}: unknown distillation loss {name!r} in distill.losses ({hint})')
        loss = cfgmod.build(student_cfg, name)
        logger.info('distillation loss %s, weight %s', name, 'auto' if loss.auto_weight else f'{loss.weight:g}')
        losses.append(loss)
    section = distill_section(student_cfg)
    schedule, balance = schedule_from_config(section)
    unlabeled = unlabeled_section(student_cfg)
    # A segmentation teacher runs in dygraph: Paddle Inference is wired for the detectors' image parts.
    engine = None if segmentation else _compile_engine(student_cfg, section.get('compile_teacher', 'auto'))
    precision = section.get('teacher_precision', 'float32')
    if precision not in PRECISIONS:
        raise PPKDError(f'{student_cfg["config_path"]}: distill.teacher_precision must be one of '
                        f'{", ".join(PRECISIONS)}; got {precision!r}')
    if precision != 'float32' and engine not in ('auto', 'inference'):
        raise PPKDError(f'{student_cfg["config_path"]}: distill.teacher_precision {precision} needs the teacher on '
                        'Paddle Inference (distill.compile_teacher: auto or inference'
                        + (', detectors only)' if segmentation else ')'))
    return Distiller(student, teacher, losses, fold_teacher_bn=section.get('fold_teacher_bn', False),
                     compile_teacher=engine, task=task_of(student_cfg),
                     tensorrt_max_size=int(section.get('teacher_tensorrt_max_size', 0)),
                     schedule=schedule, balance=balance,
                     unlabeled_weight=None if unlabeled is None else float(unlabeled.get('weight', 1.)),
                     labeled_weight=float(section.get('labeled_weight', 1.)), teacher_precision=precision,
                     reuse_teacher_outputs=_reuse_teacher_outputs(student_cfg, section, segmentation))


def _reuse_teacher_outputs(cfg, section, segmentation):
    """`distill.reuse_teacher_outputs` (default true), where the training
    images are the same every epoch (`ppkd.teacher_cache`)."""
    wanted = section.get('reuse_teacher_outputs', True)
    if not isinstance(wanted, bool):
        raise PPKDError(f'{cfg["config_path"]}: distill.reuse_teacher_outputs must be true or false; got {wanted!r}')
    if not wanted:
        return False
    if segmentation:
        logger.info('teacher: outputs not kept from epoch to epoch (detectors only)')
        return False
    changing = task_of(cfg).random_transforms()
    if changing:
        logger.info('teacher: runs on every batch (TrainReader transforms that change images between epochs: %s)',
                    ', '.join(changing))
        return False
    logger.info('teacher: outputs kept per image from epoch to epoch (the TrainReader transforms are deterministic)')
    return True


DISTILL_KEYS = ('losses', 'fold_teacher_bn', 'compile_teacher', 'teacher_precision', 'teacher_tensorrt_max_size',
                'reuse_teacher_outputs', 'unlabeled', 'labeled_weight',
                *SCHEDULE_KEYS)


def distill_section(cfg):
    """The config's `distill:` section, its keys checked."""
    section = cfg.get('distill') or {}
    if not isinstance(section, dict):
        raise PPKDError(f'{cfg["config_path"]}: distill must be a mapping, got {section!r}')
    unknown = sorted(set(section) - set(DISTILL_KEYS))
    if unknown:
        raise PPKDError(f'{cfg["config_path"]}: unknown key distill.{unknown[0]} (known: {", ".join(DISTILL_KEYS)})')
    return section


# `distill.compile_teacher` values → engine ('auto': Paddle Inference where
# the architecture allows, dygraph elsewhere without a warning).
COMPILE_ENGINES = {'auto': 'auto', True: 'auto', 'inference': 'inference', 'to_static': 'to_static',
                   False: None, 'dygraph': None, None: None}


def _compile_engine(cfg, value):
    try:
        return COMPILE_ENGINES[value]
    except (KeyError, TypeError):
        raise PPKDError(f'{cfg["config_path"]}: distill.compile_teacher must be one of auto, inference, '
                        f'to_static, dygraph (false); got {value!r}') from None
