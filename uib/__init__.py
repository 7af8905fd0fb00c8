"""UIB: machine unlearning with the Unlearning Information Bottleneck (arXiv:2405.14020).

A pure PyTorch + NumPy library: data sets and scenarios, models, training, curvature, the UIB
objective with its dynamic prior, the baselines in one registry, and the metrics.
"""

from uib.api import UnlearnReport, unlearn
from uib.samples import DataError, Samples

__all__ = ["DataError", "Samples", "UnlearnReport", "unlearn"]
