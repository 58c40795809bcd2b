"""Task families as LightningDataModules, and the builtin datasets."""

from pefthub.data.base import TaskDataModule
from pefthub.data.labelled import LabelledTaskDataModule
from pefthub.data.pair import PairClassificationDataModule
from pefthub.data.sentence import SentenceClassificationDataModule
from pefthub.data.token import TokenClassificationDataModule

__all__ = [
    "LabelledTaskDataModule",
    "PairClassificationDataModule",
    "SentenceClassificationDataModule",
    "TaskDataModule",
    "TokenClassificationDataModule",
]
