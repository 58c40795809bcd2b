"""pefthub.events: the one TensorBoard reader every results row, benchmark and test uses."""

import time

import pytest
import torch

from pefthub.events import event_tags, read_scalars


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as a killed-then-resumed run leaves it: two event files, the second
    (written later) repeating step 2 with a new value."""
    from torch.utils.tensorboard import SummaryWriter

    first = SummaryWriter(str(tmp_path))
    for step, value in [(0, 1.0), (1, 0.5), (2, 0.25)]:
        first.add_scalar("train/loss", value, step)
    first.add_scalar("val/accuracy", 0.6, 2)
    first.add_histogram("importance/query", torch.tensor([0.1, 0.2, 0.3]), 2)
    first.close()
    time.sleep(1.1)  # event file names carry the creation second
    second = SummaryWriter(str(tmp_path))
    second.add_scalar("train/loss", 0.2, 2)
    second.add_scalar("train/loss", 0.125, 3)
    second.add_text("importance/table", "| a | b |", 3)
    second.close()
    return tmp_path


def test_reads_every_scalar_in_logging_order_and_filters_by_tag(run_dir):
    files = sorted(run_dir.glob("events.out.tfevents.*"))
    assert len(files) == 2
    assert read_scalars(files[0]) == {"train/loss": [(0, 1.0), (1, 0.5), (2, 0.25)], "val/accuracy": [(2, pytest.approx(0.6))]}
    assert read_scalars(files[1]) == {"train/loss": [(2, pytest.approx(0.2)), (3, 0.125)]}
    # the folder: both files in creation order, so the resumed run's value is the later one
    folder = read_scalars(run_dir)
    assert folder["train/loss"] == [(0, 1.0), (1, 0.5), (2, 0.25), (2, pytest.approx(0.2)), (3, 0.125)]
    assert read_scalars(run_dir, tags=["val/accuracy", "never/logged"]) == {"val/accuracy": [(2, pytest.approx(0.6))]}


def test_event_tags_lists_the_non_scalar_kinds(run_dir):
    tags = event_tags(run_dir)
    assert sorted(tags["scalars"]) == ["train/loss", "val/accuracy"]
    assert tags["histograms"] == ["importance/query"]
    assert tags["tensors"] == ["importance/table/text_summary"]
    assert tags["images"] == []
