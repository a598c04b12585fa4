"""Specification of train_log.py: the step's statistics and its log row, computed by hand (one process,
so every sum over ranks is the rank's own)."""
import pytest
import torch

from data import Problem
from train_log import TRL_NAMES, log_row, pass_rates, sampler_gap


def test_sampler_gap_sums_and_maximises_over_the_mask_only():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.25, -4.0]])
    s_lp = torch.tensor([[-1.5, -2.0, -1.0], [-0.75, -1.25, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    # |d| on the mask: 0.5, 0, 0.25, 1.0 (the 2.0 and 5.0 are off it)
    total, most = sampler_gap(logp, s_lp, mask)
    assert total == pytest.approx(1.75) and most == pytest.approx(1.0)


def test_pass_rates_are_each_problems_fraction_correct_in_batch_order():
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])  # 2 problems x G = 4
    assert pass_rates(correct, 4, slice(0, 2), 2, torch.device("cpu")) == [0.75, 0.0]


def test_log_row_divides_each_sum_by_its_count_by_hand():
    batch = [Problem(id="a", problem="1+1", answer="2"), Problem(id="b", problem="2+2", answer="4")]
    sums = {"n": 8, "groups": 2, "reward": 3.0, "correct": 2.0, "zero_std": 1.0, "reward_std": 0.8, "len": 40.0,
            "truncated": 2.0, "loss": 0.125, "clip_frac": 2.0, "kl": 1.0, "ratio_mean": 19.0, "entropy": 30.0,
            "tokens": 20.0, "sampler_gap": 4.0}
    maxima = {"ratio_max": 1.3, "sampler_gap": 0.7}
    row = log_row(3, batch, sums, maxima, n_rows=6, grad_norm=0.5, lr=1e-6, t_gen=3.0, t_train=1.0,
                  has_sampler_logp=True, pass_rates=[0.75, 0.25])
    want = {"step": 3, "problem_ids": ["a", "b"], "reward": 3 / 8, "accuracy": 2 / 8, "frac_zero_std": 0.5,
            "reward_std": 0.4, "response_len": 5.0, "truncated": 0.25, "n_loss_seqs": 6, "loss": 0.125,
            "clip_frac": 0.1, "kl": 0.05, "ratio_mean": 0.95, "ratio_max": 1.3, "entropy": 1.5, "grad_norm": 0.5,
            "tokens_per_s": 10.0, "gen_tokens_per_s": 40 / 3, "skipped": False, "sampler_gap_mean": 0.2,
            "sampler_gap_max": 0.7}
    for key, value in want.items():
        assert row[key] == pytest.approx(value), key
    for ours, trl in TRL_NAMES.items():
        assert row[trl] == row[ours], trl


def test_a_step_with_no_loss_rows_is_marked_skipped_and_its_token_means_are_neutral():
    sums = dict.fromkeys(("reward", "correct", "zero_std", "reward_std", "len", "truncated", "loss", "clip_frac",
                          "kl", "ratio_mean", "entropy", "tokens", "sampler_gap"), 0.0) | {"n": 4, "groups": 1}
    row = log_row(0, [Problem(id="a", problem="1+1", answer="2")], sums, {"ratio_max": 0.0, "sampler_gap": 0.0},
                  n_rows=0, grad_norm=0.0, lr=1e-6, t_gen=1.0, t_train=0.0, has_sampler_logp=False,
                  pass_rates=[0.0])
    assert row["skipped"] and row["ratio_mean"] == 1.0 and row["entropy"] is None
    assert "sampler_gap_mean" not in row
