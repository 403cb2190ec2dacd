"""lopa.py: gradients reach only the tuner, shapes, parameter counts, LoRA, PEFT parity, learning."""
import pytest
import torch
import torch.nn.functional as F

from benchmarks.variants import LOPAVariant, LOPAVariantConfig, build_lopa
from plumbing.adapters import load_adapter, mixed_batch_hidden, save_adapter
from plumbing.cli import UserError
from lopa import LOPA, LoRA, LoRAConfig, LOPAConfig, PromptConfig, PromptTuning, closed_form, label_logits
from model import GPT, GPTConfig
from tests.helpers import TINY, padded_batch as batch, tiny_lm as tiny


@pytest.mark.parametrize("make", [lambda m: LOPA(m, LOPAConfig(m=3, r=2, hidden=8)),
                                  lambda m: PromptTuning(m, PromptConfig(m=3)),
                                  lambda m: LoRA(m, LoRAConfig(r=2))])
def test_only_tuner_gets_gradients_and_model_stays_bit_identical(make):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuner = make(model).train()
    ids, lengths = batch()
    for p in tuner.trainable_parameters():  # LoRA's B starts at 0; make every path carry gradient
        p.data.normal_(std=0.1)
    opt = torch.optim.AdamW(tuner.trainable_parameters(), lr=1e-2)
    loss = label_logits(model, tuner(ids, lengths), torch.tensor([5, 7])).logsumexp(-1).sum()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tuner.trainable_parameters())
    assert all(p.grad is None for p in model.parameters())
    opt.step()
    if isinstance(tuner, LoRA):
        for h in tuner.hooks:
            h.remove()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_encoder_output_carries_no_graph():
    model = tiny()
    tuner = LOPA(model)
    e = tuner.encode(*batch())
    assert e.grad_fn is None and not e.requires_grad


@pytest.mark.parametrize("B,T,m,r,d", [(1, 1, 1, 1, 16), (3, 7, 10, 4, 32), (5, 12, 4, 8, 48)])
def test_shapes(B, T, m, r, d):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, n_positions=64, n_embd=d, n_layer=1, n_head=4)).eval()
    ids, lengths = batch(B, T)
    for tuner in (LOPA(model, LOPAConfig(m=m, r=r, hidden=8)), PromptTuning(model, PromptConfig(m=m))):
        assert tuner.prompt(ids, lengths).shape == (B, m, d)
        assert tuner(ids, lengths).shape == (B, d)


def test_padding_does_not_change_a_row():
    model = tiny()
    tuner = LOPA(model, LOPAConfig(m=3)).eval()
    ids, lengths = batch(B=4, T=9)
    together = tuner(ids, lengths)
    for i in range(4):  # each row alone, without any padding
        alone = tuner(ids[i:i + 1, :lengths[i]], lengths[i:i + 1])
        torch.testing.assert_close(together[i:i + 1], alone, atol=1e-5, rtol=1e-5)


def test_parameter_counts_match_the_closed_form():
    for cfg in (GPTConfig(), GPTConfig(n_embd=1024, n_layer=24, n_head=16), TINY):
        with torch.device("meta"):
            model = GPT(cfg)
        d = cfg.n_embd
        for m, r, H in ((10, 4, 256), (5, 1, 64), (25, 2, 128)):
            n = sum(p.numel() for p in LOPA(model, LOPAConfig(m=m, r=r, hidden=H)).trainable_parameters())
            assert n == closed_form("lopa", d, d, m, r, H)
            n = sum(p.numel() for p in PromptTuning(model, PromptConfig(m=m)).trainable_parameters())
            assert n == closed_form("prompt", d, d, m)
        lora = LoRA(model, LoRAConfig(r=16))
        n = sum(p.numel() for p in lora.trainable_parameters())
        assert n == closed_form("lora", d, d, lora_shapes=[(d, 3 * d)] * cfg.n_layer)
    assert closed_form("lopa", 768, 768) == 1_201_192      # GPT-2 small
    assert closed_form("lopa", 1024, 1024) == 1_597_992    # the paper's "1.60M" on RoBERTa-large


def test_lora_is_a_noop_at_init_and_merge_is_exact():
    model = tiny()
    ids, _ = batch()
    base = model(ids)
    lora = LoRA(model, LoRAConfig(r=4)).eval()
    torch.testing.assert_close(model(ids), base, atol=0, rtol=0)
    for p in lora.B.values():
        p.data.normal_(std=0.1)
    adapted = model(ids)
    assert (adapted - base).abs().max() > 1e-3
    lora.merge()
    torch.testing.assert_close(model(ids), adapted, atol=1e-5, rtol=1e-5)


def test_config_validation():
    for bad in (dict(m=0), dict(r=0), dict(hidden=-1), dict(dropout=1.0)):
        with pytest.raises(UserError):
            LOPAConfig(**bad)
    for bad in (dict(combine="max"), dict(encoder_norm="l1"), dict(encoder_lr=-1.0), dict(m=0)):
        with pytest.raises(UserError):
            LOPAVariantConfig(**bad)
    with pytest.raises(UserError):
        LoRAConfig(r=0)


def test_save_and_load_round_trip(tmp_path):
    model = tiny()
    tuner = LOPAVariant(model, LOPAVariantConfig(m=3, r=2, combine="add")).eval()
    save_adapter(tuner, tmp_path, model="tiny", task="sst2")
    loaded, info = load_adapter(tmp_path, model)
    assert info["method"] == "lopa" and info["config"]["combine"] == "add" and info["task"] == "sst2"
    ids, lengths = batch()
    torch.testing.assert_close(loaded(ids, lengths), tuner(ids, lengths), atol=0, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.json", "adapter.safetensors"]
    wider = GPT(GPTConfig(vocab_size=100, n_positions=64, n_embd=48, n_layer=1, n_head=4))
    with pytest.raises(UserError, match="width"):
        load_adapter(tmp_path, wider)


def test_mixed_batch_equals_separate_runs():
    model = tiny()
    torch.manual_seed(3)
    tuners = [LOPA(model, LOPAConfig(m=4)).eval(), PromptTuning(model, PromptConfig(m=4)),
              LOPAVariant(model, LOPAVariantConfig(m=4, combine="add")).eval()]
    labels = [torch.tensor([5, 7]), torch.tensor([11, 12, 13]), torch.tensor([3, 4])]
    ids, lengths = batch(B=6, T=8)
    which = torch.tensor([0, 1, 2, 1, 0, 2])
    hidden = mixed_batch_hidden(model, tuners, ids, lengths, which)
    for i in range(6):
        t, k = tuners[which[i]], which[i]
        with torch.no_grad():
            alone = label_logits(model, t(ids[i:i + 1], lengths[i:i + 1]), labels[k])
        together = label_logits(model, hidden[i:i + 1], labels[k])
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
        assert together.argmax() == alone.argmax()
    with pytest.raises(UserError):
        mixed_batch_hidden(model, [tuners[0], LoRA(model)], ids, lengths, which % 2)


def overfit(tuner, steps=60):
    """Fit random labels on 8 fixed examples; returns the final loss."""
    model = tuner.model
    ids, lengths = batch(B=8, T=10, seed=5)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    words = torch.tensor([5, 7])
    opt = torch.optim.AdamW(tuner.trainable_parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(label_logits(model, tuner(ids, lengths), words), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_lopa_overfits_one_batch_and_beats_prompt_tuning():
    lopa_loss = overfit(LOPA(tiny(), LOPAConfig(m=4, dropout=0.0)).train())
    pt_loss = overfit(PromptTuning(tiny(), PromptConfig(m=4)).train())
    assert lopa_loss < 0.05
    assert lopa_loss < pt_loss


# ----------------------------------------------------------------------------- parity with PEFT

@pytest.fixture
def hf_and_ours(tmp_path):
    transformers = pytest.importorskip("transformers")
    from plumbing.loading import load_model
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)).eval()
    hf.save_pretrained(tmp_path)
    ours, _ = load_model(str(tmp_path))
    return hf, ours


def test_prompt_tuning_matches_peft(hf_and_ours):
    peft = pytest.importorskip("peft")
    hf, ours = hf_and_ours
    pt = PromptTuning(ours, PromptConfig(m=5))
    ref = peft.get_peft_model(hf, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)).eval()
    with torch.no_grad():
        ref.prompt_encoder["default"].embedding.weight.copy_(pt.z_s)
    ids = torch.randint(1, 100, (3, 7))
    with torch.no_grad():
        theirs = ref(input_ids=ids).logits                                # (B, m + T, V)
        mine = ours(embeds=torch.cat([pt.prompt(ids, None), ours.embed(ids)], 1))
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)


def test_lora_matches_peft(hf_and_ours):
    peft = pytest.importorskip("peft")
    hf, ours = hf_and_ours
    lora = LoRA(ours, LoRAConfig(r=4, alpha=8, dropout=0.0)).eval()
    ref = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn"],
                                                  fan_in_fan_out=True)).eval()
    with torch.no_grad():
        for i in range(2):
            key = f"transformer_h_{i}_attn_c_attn"
            lora.B[key].normal_(std=0.1)
            layer = ref.base_model.model.transformer.h[i].attn.c_attn
            layer.lora_A["default"].weight.copy_(lora.A[key])
            layer.lora_B["default"].weight.copy_(lora.B[key])
        ids = torch.randint(1, 100, (3, 7))
        torch.testing.assert_close(ours(ids), ref(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_a_trained_encoder_is_a_copy_that_learns_while_the_model_stays_frozen():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = LOPAVariant(model, LOPAVariantConfig(m=3, r=2, hidden=8, encoder_lr=1e-2)).train()
    assert not t.caches_encoder and t.encoder is not model
    groups = t.param_groups(1e-3)
    assert [g["base_lr"] for g in groups] == [1e-3, 1e-2]
    assert sum(len(g["params"]) for g in groups) == len(t.trainable_parameters())
    opt = torch.optim.AdamW(groups, lr=1e-3)
    ids, lengths = batch()
    loss = F.cross_entropy(label_logits(model, t(ids, lengths), torch.tensor([5, 7])), torch.tensor([0, 1, 1, 0]))
    loss.backward()
    opt.step()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in t.encoder.state_dict().items())
    assert LOPA(model, LOPAConfig(m=3)).caches_encoder and not any(p.requires_grad for p in model.parameters())


def tiny_llama():
    from llama import Llama, LlamaConfig
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                              n_kv_head=2, n_inner=48)).eval()
    for p in model.parameters():
        if p.dim() == 2:
            p.data.normal_(std=0.3)
    return model


@pytest.mark.parametrize("make", [tiny, tiny_llama])
def test_a_prompt_every_row_shares_computed_once_equals_it_in_every_row(make):
    """last_hidden with one prompt for all rows (prompt tuning's Z_S, computed for one row only)
    against Z_S copied in front of every row: same hidden states, same gradient to Z_S."""
    from lopa import last_hidden
    model, (ids, lengths) = make(), batch()
    z = torch.randn(5, 32, requires_grad=True)
    once = last_hidden(model, ids, lengths, z)                                 # (B, d)
    (g_once,) = torch.autograd.grad(once.square().sum(), z)
    every_row = last_hidden(model, ids, lengths, z.expand(ids.size(0), -1, -1))
    (g_rows,) = torch.autograd.grad(every_row.square().sum(), z)
    assert torch.allclose(once, every_row, atol=1e-5)
    assert torch.allclose(g_once, g_rows, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(once[1], last_hidden(model, ids, lengths)[1], atol=1e-2)  # z matters


@pytest.mark.parametrize("make", [tiny, tiny_llama])
@pytest.mark.parametrize("shared", [False, True])
def test_each_speed_path_equals_the_plain_forward(make, shared):
    """model.hidden_at (the last block's query, attention and MLP at one position per row) and
    model.hidden_at_behind_prefix (a prompt every row shares, computed once) against the plain
    forward over [Z ; E(x)] read at those positions: same hidden states, same prompt gradient."""
    model, (ids, lengths) = make(), batch()
    z = torch.randn(5, 32, requires_grad=True)
    x = torch.cat([z.expand(ids.size(0), -1, -1), model.embed(ids)], dim=1)   # (B, 5 + T, d)
    at = 5 + lengths - 1
    plain = model(embeds=x, return_hidden=True)[torch.arange(ids.size(0)), at]  # (B, d)
    fast = model.hidden_at_behind_prefix(ids, z, lengths - 1) if shared else model.hidden_at(x, at)
    (g_plain,), (g_fast,) = (torch.autograd.grad(h.square().sum(), z) for h in (plain, fast))
    assert fast.shape == plain.shape and torch.allclose(fast, plain, atol=1e-5)
    assert torch.allclose(g_fast, g_plain, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(fast[0], fast[1], atol=1e-2)         # rows read different positions


def test_lopa_without_a_study_flag_is_the_papers_class_and_its_variant_matches_it():
    """--method lopa builds lopa.LOPA itself unless a study flag is set; the variant class with the
    paper's settings computes the same prompt, and each study switch changes it."""
    model, (ids, lengths) = tiny(), batch()
    assert type(build_lopa(model, LOPAVariantConfig(m=3))) is LOPA
    assert type(build_lopa(model, LOPAVariantConfig(m=3, combine="add"))) is LOPAVariant
    torch.manual_seed(0)
    paper = LOPA(model, LOPAConfig(m=3)).eval()
    torch.manual_seed(0)
    variant = LOPAVariant(model, LOPAVariantConfig(m=3)).eval()
    torch.testing.assert_close(variant.prompt(ids, lengths), paper.prompt(ids, lengths), atol=0, rtol=0)
    for switch in (dict(combine="add"), dict(combine="2sigmoid"), dict(encoder_norm="l2")):
        torch.manual_seed(0)
        other = LOPAVariant(model, LOPAVariantConfig(m=3, **switch)).eval()
        assert not torch.allclose(other.prompt(ids, lengths), paper.prompt(ids, lengths)), switch
