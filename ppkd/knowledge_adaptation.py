"""Knowledge adaptation's first stage: the auto-encoder trained on what the
frozen teacher's feature layer outputs over the training images."""
import io
import logging
import os

import paddle

from ppkd import config as cfgmod
from ppkd.errors import PPKDError
from ppkd.losses.base import layer_channels
from ppkd.losses.segmentation import FeatureAutoEncoder
from ppkd.recorders import OutputRecorder
from ppkd.tasks import task_of
from ppkd.teacher import freeze, load_weights
from ppkd.utils import atomic_write_bytes

logger = logging.getLogger('ppkd')


def knowledge_adaptation_section(cfg):
    """The student config's KnowledgeAdaptation loss, built (its settings checked)."""
    from ppkd.builder import distill_loss_names
    if 'KnowledgeAdaptation' not in distill_loss_names(cfg):
        raise PPKDError(f'{cfg["config_path"]}: distill.losses has no KnowledgeAdaptation (its auto-encoder is '
                        'what this trains)')
    return cfgmod.build(cfg, 'KnowledgeAdaptation')


def train_autoencoder(student_cfg, teacher_cfg, teacher_weights):
    """Train and save the auto-encoder; returns the path written."""
    loss = knowledge_adaptation_section(student_cfg)
    settings, layer = loss.autoencoder_training, loss.teacher_layers[0]
    task = task_of(student_cfg)
    teacher = task_of(teacher_cfg).build_model()
    load_weights(teacher, teacher_weights, role=f'teacher ({teacher_cfg["config_path"]})')
    freeze(teacher)
    channels = layer_channels(teacher, layer, 'KnowledgeAdaptation (teacher)')
    recorder = OutputRecorder(teacher, [layer], 'teacher')
    reader = task.train_reader()
    if settings['batch_size']:
        reader.sampler.batch_size = int(settings['batch_size'])
    forward = task.teacher_forwards(teacher)[0]

    def teacher_feature(batch):
        recorder.clear()
        with paddle.no_grad():
            forward(teacher, batch, [layer])
        return recorder.outputs[layer][-1].detach()

    first = teacher_feature(next(iter(task.batches(reader, 0))))
    rms = float(paddle.sqrt(paddle.square(first).mean()))
    if not rms > 0:
        raise PPKDError(f'the teacher\'s {layer!r} outputs zeros on the first batch: nothing to encode')
    model = FeatureAutoEncoder(channels, settings['code_channels'], settings['strides'], settings['alpha'], 1. / rms)
    logger.info('auto-encoder on the teacher\'s %s (%d channels, RMS %.4g on the first batch)', layer, channels, rms)
    optimizer = paddle.optimizer.Momentum(learning_rate=float(settings['learning_rate']), momentum=0.9,
                                          weight_decay=float(settings['weight_decay']),
                                          parameters=model.parameters(),
                                          grad_clip=paddle.nn.ClipGradByGlobalNorm(10.))
    log_iter = int(student_cfg.get('log_iter', 20))
    step = 0
    for epoch in range(int(settings['epochs'])):
        for batch in task.batches(reader, epoch):
            terms = model.loss(teacher_feature(batch))
            terms['loss'].backward()
            optimizer.step()
            optimizer.clear_grad()
            if step % log_iter == 0:
                logger.info('auto-encoder epoch %d step %d: %s', epoch, step,
                            '  '.join(f'{k}: {float(v):.6f}' for k, v in terms.items()))
            step += 1
    path = loss.autoencoder_path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = {'config': model.config, 'teacher_layer': layer, 'state': model.state_dict()}
    buffer = io.BytesIO()
    paddle.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path
