"""Class-label and observation-vector conditioning, and sample-quality metrics for labelled images."""

from __future__ import annotations

import cvae

from .encoders import LabelEncoder, VectorEncoder
from .metrics import class_sample_metrics, make_class_metric

__all__ = ["LabelEncoder", "VectorEncoder", "class_sample_metrics", "make_class_metric", "cvae_conditions",
           "cvae_metrics"]


@cvae.hookimpl
def cvae_conditions() -> list[cvae.ConditionSpec]:
    return [
        cvae.ConditionSpec("label", LabelEncoder, "class label, learned embedding (dim) or one-hot; parses an index or a class name"),
        cvae.ConditionSpec("vector", VectorEncoder, "continuous observation vector, flattened or through an MLP (hidden, dim)"),
    ]


@cvae.hookimpl
def cvae_metrics() -> list[cvae.MetricSpec]:
    return [
        cvae.MetricSpec("class_samples", make_class_metric,
                        "labelled images: classifier accuracy, class-wise diversity and Frechet distance in "
                        "classifier features of samples vs real data"),
    ]
