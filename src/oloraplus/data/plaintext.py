"""Plain text (continued pretraining): every token carries loss, documents packed into `--max-length` rows.

Each document is tokenised as the tokenizer does raw text (its BOS, if it adds one) and ends with EOS; the
documents of a split are concatenated and cut into consecutive rows of `max_length` tokens, the last one
shorter (as transformers' run_clm `group_texts`, without dropping the remainder). Nothing is truncated or
dropped. The split is drawn over documents before packing, so no document is in both train and eval.
There is no prompt and no reference reply, so generation metrics cannot be computed.
"""

from __future__ import annotations

from typing import Sequence

import datasets

from oloraplus.data.example import Document
from oloraplus.data.tokenize import FEATURES, EncodeStats
from oloraplus.errors import ConfigError


def encode_documents(documents: Sequence[Document], tokenizer, max_length: int) -> tuple[datasets.Dataset, EncodeStats]:
    """Rows of at most `max_length` tokens, labels equal to the inputs (the collator masks each row's first)."""
    ids = tokenizer([d.text for d in documents])["input_ids"] if documents else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream = [t for doc in ids for t in doc + eos]
    rows = [stream[i:i + max_length] for i in range(0, len(stream), max_length)]
    dataset = datasets.Dataset.from_dict({"input_ids": rows, "labels": rows, "length": [len(r) for r in rows]},
                                         features=FEATURES)
    return dataset, EncodeStats(total=len(documents), truncated=0, dropped=0)


def is_plain_text(examples: Sequence) -> bool:
    return bool(examples) and isinstance(examples[0], Document)


def refuse_generation(data: str, flag: str) -> None:
    """Generation metrics compare a reply with a reference; plain text has neither prompt nor reference."""
    raise ConfigError(f"{flag}: {data} is plain text (continued pretraining): it has no prompts or reference "
                      "replies to generate and score; use the eval loss and perplexity")
