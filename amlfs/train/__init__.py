"""Training runs with datastore inputs: `from amlfs.train.estimator import Estimator`, as the
Azure ML SDK's `azureml.train.estimator` (also importable from `amlfs.train`)."""

from .estimator import Estimator, Run

__all__ = ["Estimator", "Run"]
