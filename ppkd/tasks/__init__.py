"""The task adapter: what the trainer, the distiller and the command-line
tools need from a framework, behind one interface per task.

    task_of(cfg).build_model()                 the config's model
    .student_loss(model, batch)                {term: loss, 'loss': total}
    .images(batch)                             the image tensor of a batch
    .teacher_forwards(teacher)                 (image part, rest) or None: run_for_features
    .teacher_tail(teacher)                     (sample, layers) or None: the rest's compilable end
    .class_names()                             class order of the training set
    .train_reader() / .eval_reader()           readers: len() batches a pass
    .batches(reader, epoch)                    one pass, seeded by the epoch
    .calibration_images(limit)                 training images, test transform (detection)
    .training_images(batches, epoch)           training images, augmented (detection)
    .schedule(steps_per_epoch)                 (epochs, iterations)
    .lr_and_optimizer(steps_per_epoch, model)
    .unlabeled_reader()                        or None
    .batch_size(batch)
    .evaluate(model, reader=None)              {metric: %, 'per_class': {...}, 'images': n, ...}
    .metric, .describe(result)                 the main figure's key, one log line

Detection is ppdet (a config with `architecture:`); segmentation is
PaddleSeg (a config with `model: {type: ...}`), see `load_config`.
"""


def task_of(cfg):
    """The task of a loaded config."""
    if cfg.get('task') == 'segmentation':
        from ppkd.tasks.segmentation import SegmentationTask
        return SegmentationTask(cfg)
    from ppkd.tasks.detection import DetectionTask
    return DetectionTask(cfg)


def is_segmentation_file(data):
    """A config file's top-level mapping is PaddleSeg's (`model: {type: ...}`
    or `_base_`) rather than ppdet's (`architecture:`, `_BASE_`)."""
    if not isinstance(data, dict):
        return False
    model = data.get('model')
    return '_base_' in data or (isinstance(model, dict) and 'type' in model)

