"""Our DPO loss (engine/dpo.py) against trl's, on the same batches.

trl 1.x computes its sigmoid loss inside DPOTrainer._compute_loss (there is no loss function of its own to
call), so the test builds a real DPOTrainer on the native export (export_model.to_llama, what
`--format native` writes), hands it our DPODataset batches in trl's layout, and compares trl's loss,
rewards and gradients with DPOLoss on the MiniMind models they were exported from. Both run in float64, so
what remains is trl's float32 log-probabilities: differences of about 1e-7.
"""
import pytest
import torch
from conftest import load_script, write_pairs

from data.datasets import DPODataset
from engine.dpo import DPOLoss
from model.model import IGNORE

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

BETA = 0.1


def trl_layout(batch: dict, pad_id: int) -> dict:
    """Our (x, y) rows as trl's inputs: the whole sequence in input_ids (x plus its last target), the reply
    positions in completion_mask (trl scores token t+1 where completion_mask[t+1] is 1), chosen rows first."""
    x = torch.cat([batch["chosen_x"], batch["rejected_x"]])
    y = torch.cat([batch["chosen_y"], batch["rejected_y"]])
    rows, length = x.shape
    target = y != IGNORE
    assert torch.equal(torch.where(target[:, :-1], y[:, :-1], x[:, 1:]), x[:, 1:])  # y is x shifted where scored
    input_ids = torch.full((rows, length + 1), pad_id)
    input_ids[:, :length] = x
    input_ids[:, 1:] = torch.where(target, y, input_ids[:, 1:])
    completion_mask = torch.zeros_like(input_ids)
    completion_mask[:, 1:] = target.long()
    last = torch.where(target, torch.arange(1, length + 1), 0).amax(dim=1)
    attention_mask = (torch.arange(length + 1) <= last[:, None]).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def test_our_dpo_loss_equals_trls_on_the_same_batches(models, tokenizer, tmp_path):
    from trl import DPOConfig, DPOTrainer

    policy, reference = models
    export_model = load_script("export_model.py")
    trl_policy, trl_reference = (export_model.to_llama(m).double().eval() for m in (policy, reference))
    pairs = write_pairs(tmp_path / "pairs.jsonl", 12, seed=3)
    rows = [line for line in datasets.Dataset.from_json(str(pairs))]
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=BETA, loss_type=["sigmoid"], report_to="none",
                     use_cpu=True, bf16=False, max_length=48)
    trainer = DPOTrainer(model=trl_policy, ref_model=trl_reference, args=args,
                         train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    ours = DPOLoss(reference, beta=BETA)

    data = DPODataset(pairs, tokenizer, seq_len=48, verbose=False)
    for start in range(0, len(data), 4):
        batch = DPODataset.collate([data[i] for i in range(start, start + 4)])
        policy.zero_grad()
        trainer.model.zero_grad()
        trainer._metrics["eval"].clear()

        loss, metrics = ours(policy, batch)
        theirs = trainer._compute_loss(trainer.model, trl_layout(batch, tokenizer.pad_token_id or 0), False)
        assert theirs.item() == pytest.approx(loss.item(), abs=1e-6)
        logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
        assert logged["rewards/chosen"] == pytest.approx(metrics["reward_chosen"].item(), abs=1e-6)
        assert logged["rewards/rejected"] == pytest.approx(metrics["reward_rejected"].item(), abs=1e-6)
        # the margin is chosen - rejected, so it carries both rewards' float32 error
        assert logged["rewards/margins"] == pytest.approx(metrics["reward_margin"].item(), abs=2e-6)
        assert logged["rewards/accuracies"] == metrics["reward_acc"].item()

        # The same update: gradients of the two losses, parameter by parameter (the export keeps the names).
        loss.backward()
        theirs.backward()
        their_grads = dict(trainer.model.named_parameters())
        for name, p in policy.named_parameters():
            assert torch.allclose(p.grad, their_grads[name].grad, rtol=1e-4, atol=1e-6), name
    assert not torch.equal(policy.lm_head.weight, reference.lm_head.weight)

