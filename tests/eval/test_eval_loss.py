import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from oloraplus.errors import DataError
from oloraplus.eval.loss import evaluate_loss

VOCAB = 44
# (prompt length, response length): different token counts per row, so weighting matters
SHAPES = [(3, 2), (7, 9), (2, 1), (5, 4), (4, 12), (6, 3), (1, 5)]


def make_rows(seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n_prompt, n_response in SHAPES:
        ids = torch.randint(4, VOCAB, (n_prompt + n_response,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * n_prompt + ids[n_prompt:], "text": "ignored"})
    return rows


def collate(rows: list[dict]) -> dict:
    """Right padding: pad id 0, attention 0, label -100. Refuses columns other than token ids."""
    assert all(set(row) <= {"input_ids", "labels", "attention_mask"} for row in rows)
    width = max(len(row["input_ids"]) for row in rows)
    pad = [width - len(row["input_ids"]) for row in rows]
    return {
        "input_ids": torch.tensor([row["input_ids"] + [0] * p for row, p in zip(rows, pad)]),
        "attention_mask": torch.tensor([[1] * len(row["input_ids"]) + [0] * p for row, p in zip(rows, pad)]),
        "labels": torch.tensor([row["labels"] + [-100] * p for row, p in zip(rows, pad)]),
    }


def reference_loss(model, rows: list[dict]) -> tuple[float, int]:
    """Sum of -log p(token | prefix) over every labelled token, one unpadded row at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            log_probs = torch.log_softmax(model(torch.tensor([row["input_ids"]])).logits[0].double(), dim=-1)
            for t in range(1, len(row["labels"])):
                if row["labels"][t] != -100:
                    total -= float(log_probs[t - 1, row["labels"][t]])
                    count += 1
    return total / count, count


@pytest.fixture
def tiny_model(make_model):
    return make_model(VOCAB, seed=3)


class FullHeadOnly(torch.nn.Module):
    """The same model, but its forward has no `logits_to_keep`: evaluation must fall back to full logits."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


@pytest.mark.parametrize("head", ["scored positions only", "full logits"])
@pytest.mark.parametrize("batch_size", [1, 2, 3, 8])
def test_token_weighted_loss_matches_hand_computation(tiny_model, batch_size, head):
    rows = make_rows()
    expected, count = reference_loss(tiny_model, rows)
    model = tiny_model if head == "scored positions only" else FullHeadOnly(tiny_model)
    got = evaluate_loss(model, rows, collate, batch_size=batch_size)
    assert got["eval_tokens"] == count == sum(n for _, n in SHAPES) - sum(1 for p, _ in SHAPES if p == 0)
    assert got["eval_loss"] == pytest.approx(expected, rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(expected), rel=1e-6)


def test_differs_from_mean_of_batch_means(tiny_model):
    rows = make_rows()
    batch_means = [reference_loss(tiny_model, rows[i : i + 2])[0] for i in range(0, len(rows), 2)]
    weighted = evaluate_loss(tiny_model, rows, collate, batch_size=2)["eval_loss"]
    assert abs(weighted - sum(batch_means) / len(batch_means)) > 1e-3


def test_accepts_a_datasets_dataset_and_restores_train_mode(tiny_model):
    from datasets import Dataset  # imported here so that spawned workers do not pay for it

    rows = make_rows()
    tiny_model.train()
    from_list = evaluate_loss(tiny_model, rows, collate, batch_size=4)
    from_dataset = evaluate_loss(tiny_model, Dataset.from_list(rows), collate, batch_size=4)
    assert tiny_model.training
    assert from_dataset == pytest.approx(from_list)


def test_no_label_tokens_is_a_data_error(tiny_model):
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}]
    with pytest.raises(DataError, match="no response tokens"):
        evaluate_loss(tiny_model, rows, collate)


class CausalBagLM(torch.nn.Module):
    """Pure-torch causal LM (running mean of embeddings): spawned workers need not import transformers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, 16)
        self.head = torch.nn.Linear(16, VOCAB)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids).cumsum(1) / torch.arange(1, input_ids.shape[1] + 1).view(1, -1, 1)
        return SimpleNamespace(logits=3 * self.head(h))


def _distributed_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = CausalBagLM()
        result = evaluate_loss(model, make_rows(), collate, batch_size=2)
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_distributed_shards_give_the_single_process_result(tmp_path):
    world = 2  # 7 rows: shards of 4 and 3 rows with different token counts
    mp.spawn(_distributed_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    single = evaluate_loss(CausalBagLM(), make_rows(), collate, batch_size=3)
    assert single["eval_loss"] == pytest.approx(reference_loss(CausalBagLM(), make_rows())[0], rel=1e-6)
    for rank in range(world):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["eval_tokens"] == single["eval_tokens"]
        assert result["eval_loss"] == pytest.approx(single["eval_loss"], rel=1e-6)
