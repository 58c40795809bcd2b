"""Token classification: subword label alignment, entity-level scores, the per-token head."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from pefthub.backbones import PACKAGED_MODELS, load_tokenizer
from pefthub.data import TokenClassificationDataModule
from pefthub.data.token import align_labels
from pefthub.metrics import EntityScore, EntityTypeF1, build_metrics

NAMES = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
ID = {name: i for i, name in enumerate(NAMES)}

minilm_installed = importlib.util.find_spec(PACKAGED_MODELS["minilm-l6"].module) is not None


def _module(**kwargs) -> TokenClassificationDataModule:
    return TokenClassificationDataModule(task="ner", **kwargs)


def _tokenize(module: TokenClassificationDataModule, words: list[str], tags: list[str]) -> dict:
    batch = {"tokens": [words], "label": [[ID[t] for t in tags]]}
    out = module.tokenize_batch(batch, module.tokenizer)
    return {key: value[0] for key, value in out.items()}


def test_align_labels_first_subword_only():
    assert align_labels([None, 0, 0, 0, 1, 2, 2, None], [3, 0, 1]) == [-100, 3, -100, -100, 0, 1, -100, -100]
    # a word with no subword (word 1) is skipped; specials stay -100
    assert align_labels([None, 0, 2, None], [5, 6, 0]) == [-100, 5, 0, -100]


@pytest.mark.skipif(not minilm_installed, reason="minilm-l6 not installed")
def test_minilm_wordpiece_alignment_on_a_handwritten_tweet():
    module = _module(backbone="minilm-l6", max_length=64)
    words = ["Unbelievably", "tokenizations", "at", "@paulwalk", "'s", "Empire", "State", "!"]
    tags = ["O", "O", "O", "B-PER", "O", "B-LOC", "I-LOC", "O"]
    out = _tokenize(module, words, tags)
    tokens = module.tokenizer.convert_ids_to_tokens(out["input_ids"])
    assert tokens == [
        "[CLS]", "un", "##bel", "##ie", "##va", "##bly", "token", "##izations", "at",
        "@", "paul", "##walk", "'", "s", "empire", "state", "!", "[SEP]",
    ]  # fmt: skip
    x = -100
    assert out["labels"] == [x, 0, x, x, x, x, 0, x, 0, ID["B-PER"], x, x, 0, x, ID["B-LOC"], ID["I-LOC"], 0, x]
    assert out["truncated"] is False and out["unaligned_words"] == 0


def test_tiny_bert_alignment_words_split_into_many_pieces_and_punctuation():
    module = _module(backbone="tiny-bert", max_length=64)
    words = ["Zurich", "is", "good", ",", "ok", "?!"]
    tags = ["B-LOC", "O", "O", "O", "O", "O"]
    out = _tokenize(module, words, tags)
    tokens = module.tokenizer.convert_ids_to_tokens(out["input_ids"])
    # the tiny vocabulary has no "zurich" or "ok": they split into characters
    assert tokens == ["[CLS]", "z", "##u", "##r", "##i", "##c", "##h", "is", "good", ",", "o", "##k", "?", "!", "[SEP]"]
    x = -100
    assert out["labels"] == [x, ID["B-LOC"], x, x, x, x, x, 0, 0, 0, 0, x, 0, x, x]


def test_truncation_keeps_labels_of_kept_words_and_warns_with_a_count(tmp_path):
    rows = [
        {"tokens": ["Rome", "is", "big"], "tags": ["B-LOC", "O", "O"]},
        {"tokens": ["the"] * 20 + ["Paris"], "tags": ["O"] * 20 + ["B-LOC"]},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    module = TokenClassificationDataModule(
        format="jsonl", train_file=str(path), label_field="tags", backbone="tiny-bert", max_length=8
    )
    with pytest.warns(UserWarning, match=r"train: 1 of 2 examples are longer than data.max_length=8"):
        module.setup("fit")
    assert module.label_names == ["O", "B-LOC"]
    long_row = module.datasets["train"][1]
    assert list(long_row["labels"]) == [-100, 0, 0, 0, 0, 0, 0, -100]  # "Paris" was cut


# --------------------------------------------------------------------------- entity scores


def _ids(tags: list[str], pad: int = 0) -> list[int]:
    return [ID[t] for t in tags] + [-100] * pad


GOLD = [
    ["B-PER", "I-PER", "O", "B-LOC"],  # PER(0-1), LOC(3)
    ["B-ORG", "I-ORG", "I-ORG", "O"],  # ORG(0-2)
    ["B-PER", "O"],  # PER(0)
]
PRED = [
    ["B-PER", "I-PER", "O", "O"],  # PER(0-1) correct; LOC missed
    ["B-ORG", "I-ORG", "O", "O"],  # ORG(0-1): partial boundary -> wrong (FP and FN)
    ["B-LOC", "O"],  # wrong type -> FP and FN
]
# gold entities 4, predicted 3, correct 1: P = 1/3, R = 1/4, F1 = 2PR/(P+R) = 2/7
EXPECTED = {"entity_precision": 1 / 3, "entity_recall": 1 / 4, "entity_f1": 2 / 7}
# token accuracy over the 10 labelled positions: wrong at gold LOC(3), ORG I(2) of row 2, row 3 token 0 -> 7/10
EXPECTED_TOKEN_ACCURACY = 0.7


def _batches():
    """Two batches, padded with -100 like special tokens and padding are."""
    first = (
        torch.tensor([[-100, *_ids(PRED[0]), -100]]),
        torch.tensor([[-100, *_ids(GOLD[0]), -100]]),
    )
    second = (
        torch.tensor([[-100, *_ids(PRED[1]), -100], [-100, *_ids(PRED[2], pad=2), -100]]),
        torch.tensor([[-100, *_ids(GOLD[1]), -100], [-100, *_ids(GOLD[2], pad=2), -100]]),
    )
    return [first, second]


def test_entity_scores_match_the_hand_computed_example():
    metrics = build_metrics("token_classification", len(NAMES), NAMES)
    for preds, target in _batches():
        # predictions at ignored positions are arbitrary: they must not matter
        preds = torch.where(target == -100, torch.full_like(preds, ID["B-ORG"]), preds)
        metrics.update(preds, target)
    result = {k: v.item() for k, v in metrics.compute().items()}
    for key, value in EXPECTED.items():
        assert result[key] == pytest.approx(value, abs=1e-6), key
    assert result["accuracy"] == pytest.approx(EXPECTED_TOKEN_ACCURACY, abs=1e-6)


def test_partial_boundary_scores_zero_and_exact_match_scores_one():
    gold = torch.tensor([_ids(["B-ORG", "I-ORG", "I-ORG"])])
    partial = EntityScore(NAMES, "f1")
    partial.update(torch.tensor([_ids(["B-ORG", "I-ORG", "O"])]), gold)
    assert partial.compute().item() == 0.0
    exact = EntityScore(NAMES, "f1")
    exact.update(gold.clone(), gold)
    assert exact.compute().item() == 1.0


def test_entity_scores_agree_with_seqeval_directly():
    from seqeval.metrics import f1_score

    metric = EntityScore(NAMES, "f1")
    for preds, target in _batches():
        metric.update(preds, target)
    assert metric.compute().item() == pytest.approx(f1_score(GOLD, PRED), abs=1e-6)


# --------------------------------------------------------------------------- the head


def test_token_head_gives_per_token_logits_and_ignores_minus_100_in_the_loss():
    from pefthub.methods import LoRAModule

    torch.manual_seed(0)
    model = LoRAModule(backbone="tiny-bert", rank=2, num_labels=len(NAMES), label_names=NAMES, task_type="token_classification")
    model.eval()
    tokenizer = load_tokenizer("tiny-bert")
    batch = tokenizer(["a good movie", "fun"], padding=True, return_tensors="pt")
    logits = model(batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (2, batch["input_ids"].shape[1], len(NAMES))
    labels = torch.full(batch["input_ids"].shape, -100)
    labels[0, 1], labels[0, 3], labels[1, 1] = 5, 0, 1
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(model.task_loss(logits, labels), expected)
    out = model.predict_step({**batch, "labels": labels}, 0)
    assert [len(p) for p in out["prediction"]] == [2, 1]
    assert all(name in NAMES for row in out["label"] for name in row)


def test_per_type_entity_f1_matches_the_hand_computed_example_and_seqeval():
    from seqeval.metrics import classification_report

    metric = EntityTypeF1(NAMES)
    for preds, target in _batches():
        metric.update(preds, target)
    per_type = {name: value.item() for name, value in metric.compute().items()}
    # PER: gold 2, predicted 1 correct -> P 1, R 1/2, F1 2/3; ORG: partial boundary -> 0;
    # LOC: gold 1 missed + 1 wrong-type prediction -> 0
    assert per_type == pytest.approx({"PER": 2 / 3, "ORG": 0.0, "LOC": 0.0}, abs=1e-6)
    report = classification_report(GOLD, PRED, output_dict=True, zero_division=0)
    assert per_type == pytest.approx({k: v["f1-score"] for k, v in report.items() if "avg" not in k}, abs=1e-6)
