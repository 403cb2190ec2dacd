"""IDPG (lopa.IDPG, `--method idpg`), the paper's instance-dependent baseline, on tiny random models."""
import pytest
import torch
import torch.nn.functional as F

from plumbing.cli import UserError
from exercises.solutions.nearest_tokens import nearest_tokens
from lopa import IDPG, IDPGConfig, closed_form, label_logits
from model import GPT, GPTConfig
from tests.helpers import TINY as SMALL, padded_batch as batch, tiny_lm as small

pytestmark = pytest.mark.usefixtures("one_thread")


def test_idpg_parameter_count_is_its_closed_form():
    for cfg in (GPTConfig(), SMALL):
        with torch.device("meta"):
            model = GPT(cfg)
        for m, H in ((10, 256), (4, 16), (25, 64)):
            n = sum(p.numel() for p in IDPG(model, IDPGConfig(m=m, hidden=H)).trainable_parameters())
            assert n == closed_form("idpg", cfg.n_embd, cfg.n_embd, m=m, H=H)
    assert closed_form("idpg", 768, 768) == 2_170_624 and closed_form("idpg", 1024, 1024) == 2_894_080
    with pytest.raises(UserError):
        IDPGConfig(m=0)


def test_idpg_prompt_is_per_input_starts_at_vocabulary_rows_and_model_stays_frozen():
    model = small()
    idpg = IDPG(model, IDPGConfig(m=3, hidden=8)).eval()
    ids, lengths = batch()
    z = idpg.prompt(ids, lengths)                                      # (B, m, d)
    assert z.shape == (4, 3, 32) and not torch.allclose(z[0], z[1])
    start = idpg.mlp[3].bias.view(3, 32)                                # copied from vocabulary rows
    sims, nearest = nearest_tokens(model, start, k=1)
    assert torch.allclose(sims, torch.ones_like(sims), atol=1e-5)
    assert F.cosine_similarity(z, start, dim=-1).min() > 0.9
    assert all(not p.requires_grad for p in model.parameters())
    torch.testing.assert_close(idpg.prompt(ids, lengths, e=idpg.encode(ids, lengths)), z, atol=0, rtol=0)


def test_idpg_fits_one_batch():
    tuner = IDPG(small(), IDPGConfig(m=4, hidden=16, dropout=0.0)).train()
    ids, lengths = batch(B=8, T=10, seed=5)
    y, words = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1]), torch.tensor([5, 7])
    opt = torch.optim.AdamW(tuner.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(label_logits(tuner.model, tuner(ids, lengths), words), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 < losses[0]
    assert all(p.grad is None for p in tuner.model.parameters())
