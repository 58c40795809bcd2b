"""`train_limit` / `eval_limit` take seeded random subsets."""

from __future__ import annotations

from pefthub.data import SentenceClassificationDataModule


def test_train_limit_draws_a_balanced_random_subset_not_the_first_rows():
    data = SentenceClassificationDataModule(task="sst2", backbone="tiny-bert", train_limit=1000, eval_limit=100)
    data.setup("fit")
    labels = data.datasets["train"]["labels"]
    assert len(labels) == 1000
    # the shipped file starts with ~96 % positives; a random subset is near the 49.5 % of the split
    assert 0.44 < sum(int(x) for x in labels) / 1000 < 0.55
    again = SentenceClassificationDataModule(task="sst2", backbone="tiny-bert", train_limit=1000, shuffle_seed=5)
    again.setup("fit")
    assert [int(x) for x in again.datasets["train"]["labels"]] == [int(x) for x in labels]


def test_shuffle_seed_follows_seed_everything(monkeypatch):
    import lightning.pytorch as pl

    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # so teardown restores whatever was there before
    pl.seed_everything(7)
    assert SentenceClassificationDataModule(task="sst2", backbone="tiny-bert").shuffle_seed == 7
    assert SentenceClassificationDataModule(task="sst2", backbone="tiny-bert", shuffle_seed=3).shuffle_seed == 3
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert SentenceClassificationDataModule(task="sst2", backbone="tiny-bert").shuffle_seed == 0
