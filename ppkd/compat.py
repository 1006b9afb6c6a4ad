"""The narrow fixes the pinned stack needs, each gated on the versions that
need it and applied once by `apply()`.

Never a copy of ppdet's or Paddle's code: each fix wraps the narrowest point.
"""
import contextlib
import functools

import paddle

from ppkd.errors import PPKDError

_applied = set()
# fix name → [(owner, attribute, original value)], so a test can undo one fix.
_patches = {}


def _patch(fix, owner, attr, value):
    _patches.setdefault(fix, []).append((owner, attr, getattr(owner, attr)))
    setattr(owner, attr, value)


@contextlib.contextmanager
def disabled(name):
    """Run with fix `name` undone (for the tests that show it is needed)."""
    patches = _patches.get(name, [])
    current = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patches]
    for owner, attr, original in patches:
        setattr(owner, attr, original)
    try:
        yield
    finally:
        for owner, attr, value in current:
            setattr(owner, attr, value)


def paddle_version():
    """(major, minor); a development build counts as the newest."""
    parts = paddle.__version__.split('.')
    try:
        return int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        return 99, 0


def _loader_thread_errors():
    """With num_workers=0, Paddle's loader thread (`_thread_loop`) catches
    only StopIteration around the dataset fetch: any other exception kills
    the thread without closing the queue, and the main thread waits on it
    forever (seen on 2.6.2 and 3.3.1). With workers, the main thread gets a
    bare "Blocking queue is killed". Keep the exception, close the queue,
    and raise it in the main thread."""
    from paddle.io.dataloader import dataloader_iter as it
    for cls in (it._DataLoaderIterSingleProcess, it._DataLoaderIterMultiProcess):
        _carry_thread_errors(cls)


def _carry_thread_errors(cls):
    thread_loop, next_batch = cls._thread_loop, cls.__next__

    @functools.wraps(thread_loop)
    def _thread_loop(self, *args, **kwargs):
        try:
            return thread_loop(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001  re-raised in the main thread
            self._ppkd_error = e
            self._exit_thread_unexpectedly()

    @functools.wraps(next_batch)
    def __next__(self):
        try:
            return next_batch(self)
        except StopIteration:
            if getattr(self, '_ppkd_error', None) is None:
                raise
        except Exception:
            if getattr(self, '_ppkd_error', None) is None:
                raise
        error = self._ppkd_error
        if isinstance(error, PPKDError):
            raise error
        raise PPKDError(f'data reader failed: {type(error).__name__}: {error}') from error

    _patch('loader_thread_errors', cls, '_thread_loop', _thread_loop)
    _patch('loader_thread_errors', cls, '__next__', __next__)


def _ppdet_export_full_graph():
    """ppdet 2.6 exports by tracing the model into a legacy static program
    (it prunes that program, and its NMS ops are built for the legacy IR).
    Paddle 2.6 and 3 trace by default with full_graph=False (bytecode
    translation), where `main_program` does not exist; Paddle 3 also traces
    into PIR. Export needs full-graph tracing and, on Paddle 3,
    FLAGS_enable_pir_api=0 (set by tools/export.py before paddle loads)."""
    from ppdet.engine import trainer
    export = trainer.Trainer.export

    @functools.wraps(export)
    def _export(self, *args, **kwargs):
        if paddle_version() >= (3, 0) and paddle.get_flags(['FLAGS_enable_pir_api'])['FLAGS_enable_pir_api']:
            raise PPKDError('exporting a ppdet 2.6 model on Paddle 3 needs FLAGS_enable_pir_api=0 '
                            'in the environment before paddle is imported (tools/export.py sets it)')
        to_static = paddle.jit.to_static
        paddle.jit.to_static = functools.partial(to_static, full_graph=True)
        try:
            return export(self, *args, **kwargs)
        finally:
            paddle.jit.to_static = to_static

    _patch('ppdet_export_full_graph', trainer.Trainer, 'export', _export)


class _PaddleConcat0D:
    """The `paddle` module as one ppdet module sees it, except that `concat`
    takes 0-D tensors as 1-element ones, as it did before Paddle 2.5 made
    `paddle.shape(x)[0]` and `x[i]` 0-D."""

    def __getattr__(self, name):
        return getattr(paddle, name)

    @staticmethod
    def concat(x, axis=0, name=None):
        if isinstance(x, (list, tuple)):
            x = [t.reshape([1]) if isinstance(t, paddle.Tensor) and t.ndim == 0 else t for t in x]
        return paddle.concat(x, axis=axis, name=name)


class _PaddleIntegerStack:
    """The `paddle` module as ppdet's SSD loss sees it, except that `stack`
    of its per-image negative counts (float) gives their ceiling as int64:
    the count is then compared with int64 ranks, which Paddle 3's type
    promotion refuses for int64 against float32. For an integer rank r and
    any real n, r < n exactly when r < ceil(n)."""

    def __getattr__(self, name):
        return getattr(paddle, name)

    @staticmethod
    def stack(x, axis=0, name=None):
        return paddle.ceil(paddle.stack(x, axis=axis, name=name)).astype('int64')


def _ssd_hard_mining_promotion():
    """SSDLoss._mine_hard_example compares int64 ranks with float32 counts."""
    from ppdet.modeling.losses import ssd_loss
    _module_paddle_during('ssd_hard_mining_promotion', ssd_loss.SSDLoss, '_mine_hard_example', ssd_loss,
                          _PaddleIntegerStack)


def _concat_0d_during(fix, owner, attr, module):
    """`owner.attr` with `module` (where the failing `paddle.concat` calls
    live) seeing `_PaddleConcat0D` as `paddle`."""
    _module_paddle_during(fix, owner, attr, module, _PaddleConcat0D)


def _module_paddle_during(fix, owner, attr, module, proxy):
    """Wrap `owner.attr` so that, while it runs, `module` sees `proxy()` as `paddle`."""
    method = getattr(owner, attr)

    @functools.wraps(method)
    def _method(*args, **kwargs):
        module.paddle = proxy()
        try:
            return method(*args, **kwargs)
        finally:
            module.paddle = paddle

    _patch(fix, owner, attr, _method)


def _rpn_proposals_0d():
    """RPNHead._gen_proposal concatenates the per-image `paddle.shape(rois)[0]`."""
    from ppdet.modeling.proposal_generator import rpn_head
    _concat_0d_during('rpn_proposals_0d', rpn_head.RPNHead, '_gen_proposal', rpn_head)


def _proposal_targets_0d():
    """generate_proposal_target (called by BBoxAssigner) concatenates the
    per-image `paddle.shape(sampled_inds)[0]`."""
    from ppdet.modeling.proposal_generator import target, target_layer
    _concat_0d_during('proposal_targets_0d', target_layer.BBoxAssigner, '__call__', target)


def _bbox_get_pred_0d():
    """BBoxPostProcess.get_pred concatenates `bbox_num[i]` and `scale_factor[i][0]`."""
    from ppdet.modeling import post_process
    _concat_0d_during('bbox_get_pred_0d', post_process.BBoxPostProcess, 'get_pred', post_process)


class _PaddleFloatOnes:
    """The `paddle` module as PaddleSeg's cross-entropy sees it, except that
    `ones_like` of an integer label gives float32 ones: its unit pixel
    weights then multiply the float32 mask, which Paddle 3's type promotion
    refuses for int64."""

    def __getattr__(self, name):
        return getattr(paddle, name)

    @staticmethod
    def ones_like(x, dtype=None, name=None):
        if dtype is None and not paddle.is_floating_point(x):
            dtype = 'float32'
        return paddle.ones_like(x, dtype=dtype, name=name)


def _paddleseg_ce_float_weights():
    """CrossEntropyLoss._post_process_loss (and so DistillCrossEntropyLoss):
    `mask * coef`, float32 × int64."""
    from paddleseg.models.losses import cross_entropy_loss
    _module_paddle_during('paddleseg_ce_float_weights', cross_entropy_loss.CrossEntropyLoss, '_post_process_loss',
                          cross_entropy_loss, _PaddleFloatOnes)


def _paddleseg_area_0d():
    """metrics.calculate_area concatenates the per-class 0-D pixel counts."""
    from paddleseg.utils import metrics
    _concat_0d_during('paddleseg_area_0d', metrics, 'calculate_area', metrics)


def _paddleseg_ohem_promotion():
    """OhemCrossEntropyLoss.forward pushes ignored pixels above every
    probability with `prob + (1 - valid_mask)`, float32 + int64, which
    Paddle 3's type promotion refuses: the same selection (PaddleSeg 2.8's
    documented behaviour), written with boolean masks instead."""
    from paddleseg.models.losses import ohem_cross_entropy_loss
    _patch('paddleseg_ohem_promotion', ohem_cross_entropy_loss.OhemCrossEntropyLoss, 'forward', _ohem_forward)


def _ohem_forward(self, logit, label):
    """Cross entropy over the hard pixels: those whose probability of their
    own class is below `thresh`, or below the `min_kept`-th smallest such
    probability when that is higher; every valid pixel when `min_kept` is 0
    or not below the number of valid pixels. Mean over the kept pixels."""
    if label.ndim == logit.ndim:
        label = label.squeeze(1)
    label = label.astype('int64')
    valid = label != self.ignore_index
    target = paddle.where(valid, label, paddle.zeros_like(label)).unsqueeze(1)
    log_prob = paddle.nn.functional.log_softmax(logit, axis=1)
    own_log_prob = paddle.take_along_axis(log_prob, target, axis=1).squeeze(1)
    kept = valid
    if 0 < self.min_kept < int(valid.astype('int64').sum()):
        own_prob = paddle.where(valid, own_log_prob.detach().exp(), paddle.full_like(own_log_prob, 2.))
        kth = float(paddle.sort(own_prob.flatten())[self.min_kept - 1])
        kept = valid & (own_prob < max(self.thresh, kth))
    kept = kept.astype(logit.dtype)
    return paddle.mean(-own_log_prob * kept) / (paddle.mean(kept) + self.EPS)


def inference_needs_legacy_ir():
    """Paddle 3's PIR inference passes crash on ppdet models (3.3.1:
    `conv_activation_mkldnn_fuse_pass` segfaults building FusedConv2dOp on
    YOLOv3), so an exported teacher is saved as a legacy program
    (`legacy_ir_export`) and run with the legacy passes
    (`Config.enable_new_ir(False)`), as on Paddle 2.6."""
    return paddle_version() >= (3, 0)


def legacy_ir_export(enabled):
    """Where `jit.save` must write a legacy program (see above)."""
    return paddle.pir_utils.DygraphOldIrGuard() if enabled else contextlib.nullcontext()


def calibration_loader(feeds):
    """The static quantiser's `data_loader` over `feeds` (feed dicts): it
    calls what it is given for an iterator; Paddle 2.6 also asserts that it
    is a `paddle.io.DataLoader` (whose own call iterates it)."""
    if paddle_version() >= (3, 0):
        return lambda: iter(feeds)

    class Feeds(paddle.io.DataLoader):
        def __init__(self):  # no data set: the feeds are ready
            pass

        def __call__(self):
            return iter(feeds)

        def __len__(self):
            return len(feeds)

    return Feeds()


@contextlib.contextmanager
def legacy_static_mode():
    """Static mode on legacy programs, for the static-graph quantiser
    (`PostTrainingQuantization`): on Paddle 3 static mode builds PIR
    programs, which it cannot read (it loads a `.pdmodel` as PIR and fails
    decoding it), so the legacy IR is switched on for its run."""
    guard = paddle.pir_utils.OldIrGuard() if paddle_version() >= (3, 0) else contextlib.nullcontext()
    with guard:
        paddle.enable_static()
        try:
            yield
        finally:
            paddle.disable_static()


def _zero_d_tensors():
    return paddle_version() >= (2, 5)


# name → (needed on this stack?, fix)
FIXES = {
    'loader_thread_errors': (lambda: paddle_version() <= (3, 3), _loader_thread_errors),
    'ppdet_export_full_graph': (lambda: paddle_version() >= (2, 6), _ppdet_export_full_graph),
    'rpn_proposals_0d': (_zero_d_tensors, _rpn_proposals_0d),
    'proposal_targets_0d': (_zero_d_tensors, _proposal_targets_0d),
    'bbox_get_pred_0d': (_zero_d_tensors, _bbox_get_pred_0d),
    'ssd_hard_mining_promotion': (lambda: paddle_version() >= (3, 0), _ssd_hard_mining_promotion),
}


# Applied when the segmentation task loads (importing PaddleSeg costs every detection command otherwise).
PADDLESEG_FIXES = {
    'paddleseg_ce_float_weights': (lambda: paddle_version() >= (3, 0), _paddleseg_ce_float_weights),
    'paddleseg_area_0d': (_zero_d_tensors, _paddleseg_area_0d),
    'paddleseg_ohem_promotion': (lambda: paddle_version() >= (3, 0), _paddleseg_ohem_promotion),
}


def apply(only=None, fixes=None):
    """Apply every fix of `fixes` (ppdet's by default) this stack needs (or
    just `only`); idempotent."""
    for name, (needed, fix) in (FIXES if fixes is None else fixes).items():
        if (only is None or name in only) and name not in _applied and needed():
            fix()
            _applied.add(name)
