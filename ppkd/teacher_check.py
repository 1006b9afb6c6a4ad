"""Before distilling: the teacher scored on the first test images of the
student's data, through the student's reader, against the teacher's own
record (the `metrics.jsonl` of the run that trained it). A teacher that
scores near zero there, or far below its record, would teach the student
what it gets wrong: refused, with the figures (`--skip_teacher_check`)."""
import json
import logging
import os

from ppkd.errors import PPKDError

logger = logging.getLogger('ppkd')

CHECK_IMAGES = 32  # scored: enough to tell a working teacher from a broken one in seconds
MIN_IMAGES = 16    # fewer test images than this: no verdict, only the figure
NEAR_ZERO = 1.0    # % (mAP or mIoU)
FAR_BELOW = 0.5    # of its record, and at least MIN_GAP points under it
MIN_GAP = 10.0


def recorded_score(weights_path, metric):
    """The last evaluation the teacher's own run recorded beside its
    weights: (score, images) or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(weights_path)), 'metrics.jsonl')
    if not os.path.isfile(path):
        return None
    best = None
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get('type') == 'eval' and metric in row:
                best = (float(row[metric]), row.get('images'))
    return best


def check_teacher(task, teacher, weights_path):
    """Score `teacher` with the student's `task` on its first test images;
    raise when it cannot teach (see the module's doc)."""
    try:
        reader = task.eval_reader(limit=CHECK_IMAGES)
    except PPKDError as e:
        logger.info('teacher check skipped: no test set to score it on (%s)', e)
        return None
    result = task.evaluate(teacher, reader)
    metric, score, images = task.metric, result[task.metric], result['images']
    record = recorded_score(weights_path, metric)
    own = f' (its own record: {record[0]:.2f}% over {record[1]} images)' if record else ' (no record of its own)'
    logger.info('teacher check: %s %.2f%% on the first %d test images through the student\'s reader%s',
                metric, score, images, own)
    if images < MIN_IMAGES:
        logger.info('teacher check: %d test images are too few to judge by (%d needed); not judged', images,
                    MIN_IMAGES)
        return result
    how = (f'the teacher scores {metric} {score:.2f}% on the first {images} test images of the student\'s data'
           f'{own}')
    if score < NEAR_ZERO and (record is None or record[0] >= 5 * NEAR_ZERO):
        raise PPKDError(f'{how}: it has nothing to teach (wrong weights, classes or input pipeline?); '
                        '--skip_teacher_check to distill anyway')
    if record is not None and score < FAR_BELOW * record[0] and record[0] - score >= MIN_GAP:
        raise PPKDError(f'{how}: far below what it scored when trained (another input size, normalisation or '
                        'data?); --skip_teacher_check to distill anyway')
    return result
