"""Normalize: flatten nested records, infer and coerce types, event time and watermarks.

The stage is :class:`Normalizer`; its output is a :class:`NormalizedBatch`.
"""

from lakegate.core.types import TIMESTAMP, type_from_str, type_to_str
from lakegate.normalize.event_time import Watermark, late_labels
from lakegate.normalize.flatten import FlatTable, flatten, to_json
from lakegate.normalize.stage import CHILD_SYSTEM_FIELDS, ROW_SYSTEM_FIELDS, NormalizedBatch, Normalizer
from lakegate.normalize.types import Coercion, coerce, infer

__all__ = [
    "CHILD_SYSTEM_FIELDS",
    "ROW_SYSTEM_FIELDS",
    "TIMESTAMP",
    "Coercion",
    "FlatTable",
    "NormalizedBatch",
    "Normalizer",
    "Watermark",
    "coerce",
    "flatten",
    "infer",
    "late_labels",
    "to_json",
    "type_from_str",
    "type_to_str",
]
