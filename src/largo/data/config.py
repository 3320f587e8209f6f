"""The [data] section: what every architecture's data has (a source, a prepared folder, a held-out share), and the language model's.

Each architecture's spec names its data config class: the language model's is TextDataConfig below;
the classifiers' (images, audio, labelled text) extend ClassDataConfig next to their preparers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from largo.errors import ConfigError


def check_non_negative(section: object, *keys: str) -> None:
    """Raise naming the first of `keys` whose value is below 0."""
    for key in keys:
        if getattr(section, key) < 0:
            raise ConfigError(f"data.{key} ({getattr(section, key)}) must be >= 0")


@dataclass
class DataConfig:
    """Where the data comes from and where its prepared form is cached."""

    source: str = ""  # what to read: a built-in name, a folder, a glob, a file (each architecture lists its own), or "hf:NAME"
    dir: str = "data/prepared"  # prepared data folder (cache + manifest)
    val_fraction: float = 0.02  # share of the examples held out for validation
    # "hf:NAME" sources, read with Hugging Face `datasets`: NAME is a folder written by save_to_disk, a builder
    # (parquet, json, csv, text, imagefolder, audiofolder, ...) reading data.data_files, or a hub name (offline: refused)
    split: str = "train"  # hf: the split to read (largo holds out its own validation share from it)
    config: str = ""  # hf: the dataset's configuration (subset) name; "" = its default
    data_files: list[str] = field(default_factory=list)  # hf builders: files or globs read as data.split
    streaming: bool = False  # hf: stream the rows (no Arrow cache is built first): for corpora larger than memory or disk

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction ({self.val_fraction}) must be in (0, 0.5)")
        if self.data_files and not self.source.startswith("hf:"):
            raise ConfigError(f"data.data_files is read by 'hf:' sources (e.g. source = \"hf:parquet\"); data.source is {self.source!r}")


@dataclass
class TextDataConfig(DataConfig):
    """A text corpus prepared into BPE token shards for language modelling."""

    source: str = "stdlib"  # "stdlib", a folder, a glob, a .jsonl/.csv/.parquet file, or "hf:NAME" (Hugging Face datasets)
    dir: str = "data/stdlib"  # prepared data folder (tokenizer, shards, manifest)
    text_column: str = "text"  # column holding the text in .jsonl/.csv/.parquet and hf: sources
    vocab_size: int = 4096  # BPE vocabulary size, special tokens included
    tokenizer: str = ""  # encode with this existing tokenizer.json (e.g. an imported model's); "" = train a BPE
    max_bytes: int = 0  # stop reading the source after this many bytes; 0 = all
    tokenizer_train_bytes: int = 200_000_000  # bytes of text the BPE tokenizer learns from
    shard_tokens: int = 50_000_000  # tokens per shard file

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 257 <= self.vocab_size <= 1 << 20:
            raise ConfigError(f"data.vocab_size ({self.vocab_size}) must be in [257, 1048576]: 256 bytes + specials")
        for key in ("max_bytes", "tokenizer_train_bytes", "shard_tokens"):
            if getattr(self, key) < 0 or (key != "max_bytes" and getattr(self, key) == 0):
                raise ConfigError(f"data.{key} ({getattr(self, key)}) must be > 0")


@dataclass
class ClassDataConfig(DataConfig):
    """Labelled examples cached as arrays for classification."""

    label_column: str = "label"  # .csv/.parquet and hf: sources: column holding the class label
    test_source: str = ""  # an extra labelled test set reported on its own at the end; "" = none
    test_split: str = "test"  # an hf: test_source: the split to read
    test_files: list[str] = field(default_factory=list)  # an hf: builder test_source: files or globs read as data.test_split
    max_rows: int = 0  # keep at most this many training examples; 0 = all (quick runs, tests)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "max_rows")
