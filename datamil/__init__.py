"""datamil: pick the prior robot data that helps one new task, with datamodels (DataMIL)."""

__version__ = "0.1.0"
