"""Task families as LightningDataModules, and the builtin datasets."""

from pefthub.data.base import TaskDataModule
from pefthub.data.sentence import SentenceClassificationDataModule

__all__ = ["SentenceClassificationDataModule", "TaskDataModule"]
