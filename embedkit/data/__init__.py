"""The data pipeline: corpora, tokenizers, token shards, windows and the Lightning data module."""

from embedkit.data.corpus import BundledCorpus, Corpus, HuggingFaceDataset, TextFiles
from embedkit.data.datamodule import TextDataModule, unigram_perplexity
from embedkit.data.shards import ShardManifest, TokenShards, write_shards
from embedkit.data.text import split_document
from embedkit.data.tokenizers import BPETokenizer, ByteTokenizer, Tokenizer, TokenizerFile
from embedkit.data.windows import IGNORE_INDEX, EpochSampler, RandomWindows, ValidationWindows

__all__ = [
    "IGNORE_INDEX",
    "BPETokenizer",
    "BundledCorpus",
    "ByteTokenizer",
    "Corpus",
    "EpochSampler",
    "HuggingFaceDataset",
    "RandomWindows",
    "ShardManifest",
    "TextDataModule",
    "TextFiles",
    "TokenShards",
    "Tokenizer",
    "TokenizerFile",
    "ValidationWindows",
    "split_document",
    "unigram_perplexity",
    "write_shards",
]
