"""Frozen-feature evaluation, shared by the trainer (its final evaluation) and ``python -m fastssl.eval``.

- ``features``: a backbone's features over a data source; ``taps``: the per-layer taps the field
  evaluates (ResNet stem, layer1..layer4, pool; ViT blocks at quarter depths, norm, pool), each
  average-pooled to a documented width, from one pass over the images;
- ``knn``: weighted kNN (k=20, cosine) and top-k accuracy; ``linear``: the linear probe;
- ``layers``: both protocols at every tap, learned next to the run's own random initialization, as a table;
- ``checkpoints``: the backbone of a training checkpoint (learned or at its random initialization).

Labels are the *training* split's class indices everywhere (``fastssl.data.dataset_splits`` builds the
val split with the train split's class-to-index map), so ``num_classes = len(train.classes)``.
"""

from fastssl.evaluation.checkpoints import TRAINING_CHECKPOINT_KEYS, backbone_from_checkpoint
from fastssl.evaluation.features import extract_features
from fastssl.evaluation.knn import knn_classify, topk_accuracy
from fastssl.evaluation.linear import linear_probe

__all__ = ["TRAINING_CHECKPOINT_KEYS", "backbone_from_checkpoint", "extract_features", "knn_classify",
           "linear_probe", "topk_accuracy"]
