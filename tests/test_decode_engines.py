"""Specification of decode_engines.py: the compact engine's cache compaction leaves the tokens of
transformers' `generate` unchanged, and its top-p draw keeps the smallest nucleus."""
import torch

import decode_engines
import sampler


def test_compaction_happens_and_changes_no_token(toy_world, monkeypatch):
    """Rows leave the cache as they finish; the survivors' tokens are what `generate` gives."""
    kept_rows = []
    make_cache = decode_engines._slab_cache

    def counting_cache(*args, **kwargs):
        cache = make_cache(*args, **kwargs)
        select = cache.batch_select_indices

        def counted(indices):
            kept_rows.append(len(indices))
            select(indices)
        cache.batch_select_indices = counted
        return cache

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data import format_prompt, load_problems

    # the warm-started toy model answers "\\boxed{N}" or a bare "N": rows stop at different times
    model = AutoModelForCausalLM.from_pretrained(toy_world.model_dir)
    tok = AutoTokenizer.from_pretrained(toy_world.model_dir)
    prompts = [format_prompt(p.problem, tok, "chatml") for p in load_problems(toy_world.test_path)[:120]]
    monkeypatch.setattr(decode_engines, "_slab_cache", counting_cache)
    kw = dict(group_size=1, temperature=0.0, max_new_tokens=16, gen_batch_size=120, seed=0)
    a = sampler.sample_rollouts(model, tok, prompts, engine="compact", **kw)
    b = sampler.sample_rollouts(model, tok, prompts, engine="hf", **kw)
    assert len(kept_rows) >= 2 and kept_rows == sorted(kept_rows, reverse=True), kept_rows
    assert torch.equal(a.input_ids, b.input_ids)


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    gen = torch.Generator().manual_seed(0)
    token, lp = decode_engines._next_token(logits, 1.0, 0.8, gen)
    counts = torch.bincount(token, minlength=4)
    assert counts[2] == 0 and counts[3] == 0  # 0.5 + 0.3 reaches 0.8: the nucleus is {0, 1}
    assert abs(counts[0].item() / 4000 - 0.5 / 0.8) < 0.03
    # the reported log-prob is the untruncated one, as the trainer scores it
    torch.testing.assert_close(lp[token == 1], torch.full_like(lp[token == 1], float(torch.log(torch.tensor(0.3)))))
