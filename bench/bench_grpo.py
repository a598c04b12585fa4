"""bench/bench_grpo.py -- one GRPO step, taken apart; learning on the toy world; TRL for scale.

    python bench/bench_grpo.py [--toy DIR] [--smollm DIR] [--steps 3] [--no-trl]
        time split of a step (generation / log-prob forward / backward / optimizer) and peak memory,
        for the toy model and for SmolLM2-135M when a folder is given (default /work/models/smollm2
        if it exists); where `trl` imports, the same step through trl.GRPOTrainer, as a ratio.
    python bench/bench_grpo.py --engines [--smollm DIR] [--threads 2]
        generation tokens/s of each rollout engine, side by side (hf = transformers generate, the old path;
        graph = graph_decode.py, eager on a CPU;
        compact = ours) on the same prompts, and training tokens/s of one step's loss + backward
        padded in order (the old path), padded after sorting under a token budget, and packed.
    python bench/bench_grpo.py --learn [--seeds 0 1 2] [--learn-steps 40] [--bare-fracs 0.3 0.0]
        held-out clean-problem reward before and after 40 toy-preset GRPO steps (vanilla random
        order over all training problems), per training seed, on the shipped world (30% of its
        warm-start answers unboxed) and on a control world whose warm start always boxes.

Results go to bench/results/grpo.json (written atomically; sections are merged, so --learn and the
timing run can be made separately). Each measurement runs in its own subprocess so that peak RSS
(CPU) / max_memory_allocated (CUDA) belongs to that model alone. TRL is looked up on sys.path and
in $TRL_SITE (a `pip install --target` folder kept apart from the main environment).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "grpo.json"
SMOLLM_DEFAULT = Path("/work/models/smollm2")
TOY_DEFAULT = ROOT / "toy_world"

import torch  # noqa: E402

import batching  # noqa: E402
import grpo  # noqa: E402
import sampler  # noqa: E402
from data import load_problems  # noqa: E402
from runtime import atomic_write_text  # noqa: E402
from schedule import random_schedule  # noqa: E402


def _peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _toy_world(path: Path):
    """The toy world in `path`; toy.build_world reuses a finished one and builds it otherwise."""
    import toy

    return toy.build_world(path, seed=0)


def _load(model_dir, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    return model, tok


# ----------------------------------------------------------------------------------------------
# One step, instrumented: the same calls grpo.grpo_step makes, with a clock between them
# ----------------------------------------------------------------------------------------------
def timed_step(model, tok, batch, cfg, optimizer, step, reward_fn, device) -> dict:
    from data import format_prompt

    def now():
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    t = {"generation": 0.0, "logprob": 0.0, "backward": 0.0, "optimizer": 0.0}
    t0 = now()
    prompts = [format_prompt(p.problem, tok, cfg.template) for p in batch]
    roll = grpo.sample_rollouts(model, tok, prompts, group_size=cfg.group_size, temperature=cfg.temperature,
                                top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                gen_batch_size=cfg.gen_batch_size, seed=grpo.step_seed(cfg.seed, step),
                                engine=cfg.rollout_engine)
    t["generation"] = now() - t0
    rewards = torch.tensor([reward_fn(x, batch[i // cfg.group_size].answer) for i, x in enumerate(roll.texts)])
    adv = grpo.group_advantages(rewards.view(-1, cfg.group_size), scale=cfg.adv_scale).view(-1).to(device)
    cmask = roll.completion_mask.float()
    norm = grpo.loss_normalizer(cmask, cfg.loss_type, cfg.max_new_tokens)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    packed = batching.uses_packing(model, cfg)
    for m in batching.micro_batches(roll.attention_mask.sum(1).tolist(), max_rows=cfg.micro_batch_size,
                                max_tokens=cfg.max_tokens_per_micro_batch, packed=packed):
        m = torch.tensor(m, device=roll.input_ids.device)  # the micro-batches grpo_step cuts
        t1 = now()
        logp = batching.batch_logprobs(model, roll.input_ids[m], roll.attention_mask[m], cmask[m], cfg, device, True,
                                       packed)
        loss, _ = grpo.policy_loss(logp, logp.detach(), adv[m], cmask[m], loss_type=cfg.loss_type,
                                   eps_low=cfg.eps_low, eps_high=cfg.eps_high, normalizer=norm)
        t2 = now()
        loss.backward()
        t3 = now()
        t["logprob"] += t2 - t1
        t["backward"] += t3 - t2
    t4 = now()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    t["optimizer"] = now() - t4
    t["total"] = sum(t.values())
    t["completion_tokens"] = float(roll.lengths.sum())
    t["reward"] = float(rewards.mean())
    return t


def worker_ours(spec: dict) -> dict:
    from verifier import math_reward

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = _load(spec["model_dir"], device)
    problems = load_problems(spec["train_path"], limit=spec["batch_size"] * (spec["steps"] + 1))
    cfg = grpo.GRPOConfig(**spec["cfg"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rows = []
    for step in range(spec["steps"] + 1):  # step 0 warms up (allocations, kernel selection)
        batch = problems[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        rows.append(timed_step(model, tok, batch, cfg, opt, step, math_reward, device))
    keys = rows[0].keys()
    mean = {k: sum(r[k] for r in rows[1:]) / len(rows[1:]) for k in keys}
    return {"step_seconds": mean, "peak_mb": _peak_mb(device), "device": str(device),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def worker_engines(spec: dict) -> dict:
    """Generation tokens/s per rollout engine on the same prompts, then training tokens/s of one
    step's loss+backward over those rollouts: padded in order (the old path), padded after sorting
    by length under a token budget, and packed (padding-free) under the same budget."""
    import sampler
    from data import format_prompt

    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = _load(spec["model_dir"], device)
    cfg = grpo.GRPOConfig(**spec["cfg"])
    problems = load_problems(spec["train_path"], limit=cfg.batch_size)
    prompts = [format_prompt(p.problem, tok, cfg.template) for p in problems]
    gen, roll = {}, None
    for rep in range(2):  # the first pass warms up; the second is timed
        for engine in spec["engines"]:
            t0 = time.perf_counter()
            r = sampler.sample_rollouts(model, tok, prompts, group_size=cfg.group_size, temperature=1.0,
                                        max_new_tokens=cfg.max_new_tokens, gen_batch_size=cfg.gen_batch_size,
                                        seed=1, engine=engine)
            sec = time.perf_counter() - t0
            gen[engine] = {"seconds": sec, "tokens": float(r.lengths.sum()),
                           "tokens_per_s": float(r.lengths.sum()) / sec}
            roll = r if engine == "compact" else roll or r
    cm = roll.completion_mask.float()
    adv = torch.linspace(-1, 1, len(cm))
    norm = grpo.loss_normalizer(cm, "grpo")
    lengths = roll.attention_mask.sum(1).tolist()
    budget = spec["max_tokens"]
    layouts = {"padded, in order": (batching.micro_batches(lengths, max_rows=spec["micro_rows"]), False),
               "padded, sorted, token budget": (batching.micro_batches(lengths, max_rows=10 ** 6, max_tokens=budget), False),
               "packed, token budget": (batching.micro_batches(lengths, max_rows=10 ** 6, max_tokens=budget, packed=True), True)}
    train = {}
    model.train()
    for rep in range(2):
        for name, (mbs, packed) in layouts.items():
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            for m in mbs:
                m = torch.tensor(m)
                lp = batching.batch_logprobs(model, roll.input_ids[m], roll.attention_mask[m], cm[m], cfg, device, True, packed)
                loss, _ = grpo.policy_loss(lp, lp.detach(), adv[m], cm[m], normalizer=norm)
                loss.backward()
            sec = time.perf_counter() - t0
            real = float(roll.attention_mask.sum())
            padded = sum(len(m) * max(lengths[i] for i in m) for m in mbs) if not packed else real
            train[name] = {"seconds": sec, "real_tokens": real, "computed_tokens": float(padded),
                           "micro_batches": len(mbs), "real_tokens_per_s": real / sec}
    return {"generation": gen, "training": train, "threads": torch.get_num_threads(),
            "response_len": {"mean": float(roll.lengths.float().mean()), "min": int(roll.lengths.min()),
                             "max": int(roll.lengths.max())}}


def engines(args, base) -> None:
    """--engines: generation per engine and training layouts, toy and SmolLM2, one table."""
    specs = {}
    if base.get("model_dir"):
        specs["toy"] = {**base, "cfg": asdict(grpo.GRPOConfig.toy(batch_size=32)), "micro_rows": 256,
                        "max_tokens": 4096}
    if args.smollm:
        specs["smollm2-135m"] = {**base, "model_dir": str(args.smollm), "micro_rows": 8, "max_tokens": 2048,
                                 "cfg": asdict(grpo.GRPOConfig.toy(batch_size=8, group_size=8, max_new_tokens=96,
                                                                   gen_batch_size=8, lr=1e-6))}
    out = {}
    for name, spec in specs.items():
        spec["engines"] = ["hf", "compact", "graph"]
        spec["threads"] = args.threads
        out[name] = run_worker("engines", spec)
        r = out[name]
        if "error" in r:
            print(f"{name}: error {r['error']}")
            continue
        hf = r["generation"]["hf"]["tokens_per_s"]
        print(f"{name}: responses {r['response_len']}, {r['threads']} threads")
        for eng, g in r["generation"].items():
            print(f"  generate {eng:8s} {g['tokens_per_s']:9.0f} tok/s  ({g['tokens_per_s'] / hf:.2f}x hf)")
        old = r["training"]["padded, in order"]["real_tokens_per_s"]
        for lay, t in r["training"].items():
            print(f"  train {lay:30s} {t['real_tokens_per_s']:8.0f} real tok/s ({t['real_tokens_per_s'] / old:.2f}x), "
                  f"{t['computed_tokens'] / t['real_tokens']:.2f} computed/real, {t['micro_batches']} micro-batches")
    _merge_results("engines", {"machine": f"{os.cpu_count()}-core CPU, torch {torch.__version__}", **out})


def worker_trl(spec: dict) -> dict:
    """The same step through trl.GRPOTrainer: same model, B, G, max tokens, micro-batch, lr, beta = 0."""
    if os.environ.get("TRL_SITE"):
        sys.path.append(os.environ["TRL_SITE"])
    import trl
    from datasets import Dataset
    from datasets.table import InMemoryTable
    from transformers import TrainerCallback

    from data import format_prompt
    from verifier import math_reward

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = _load(spec["model_dir"], device)
    c = spec["cfg"]
    steps = spec["steps"] + 1
    problems = load_problems(spec["train_path"], limit=c["batch_size"] * steps)
    rows = [{"prompt": format_prompt(p.problem, tok, c["template"]), "answer": p.answer} for p in problems]
    # A fixed fingerprint: datasets' dill-based hashing fails on pyarrow 26 types (MonthDayNano).
    ds = Dataset(InMemoryTable.from_pylist(rows), fingerprint="bench_grpo")

    def reward(prompts, completions, answer, **kw):
        return [math_reward(x, a) for x, a in zip(completions, answer)]

    n_seq = c["batch_size"] * c["group_size"]
    mb = min(c["micro_batch_size"], n_seq)
    args = trl.GRPOConfig(
        output_dir=str(Path(spec["tmp"]) / "trl"), per_device_train_batch_size=mb,
        gradient_accumulation_steps=n_seq // mb, num_generations=c["group_size"],
        max_completion_length=c["max_new_tokens"], temperature=c["temperature"], top_p=1.0, top_k=0,
        beta=0.0, loss_type="grpo", learning_rate=c["lr"], lr_scheduler_type="constant", max_steps=steps,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=device.type == "cpu",
        bf16=device.type == "cuda", seed=0, shuffle_dataset=False, disable_tqdm=True,
        gradient_checkpointing=c["gradient_checkpointing"])
    step_times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            step_times.append(time.perf_counter() - self.t)

    trainer = trl.GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=ds,
                              processing_class=tok, callbacks=[Clock()])
    trainer.train()
    # TRL generates a whole generation batch at the first micro-step of an optimizer step, so an
    # optimizer step (on_step_begin..on_step_end) holds one full GRPO step: generation included.
    return {"step_seconds": {"total": sum(step_times[1:]) / max(len(step_times) - 1, 1)},
            "peak_mb": _peak_mb(device), "device": str(device), "trl_version": trl.__version__,
            "step_times": step_times}


def run_worker(kind: str, spec: dict, timeout: int = 1800) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", kind, json.dumps(spec)], capture_output=True,
                         text=True, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Learning on the toy world
# ----------------------------------------------------------------------------------------------
def heldout_reward(model, tok, problems, cfg, *, samples: int, seed: int = 1234) -> dict:
    """Mean reward of `samples` sampled completions per problem (temperature 1), the share of them
    that box an answer, the reward among those, and greedy accuracy."""
    from data import format_prompt
    from verifier import last_boxed, math_reward

    prompts = [format_prompt(p.problem, tok, cfg.template) for p in problems]
    roll = grpo.sample_rollouts(model, tok, prompts, group_size=samples, temperature=1.0,
                                max_new_tokens=cfg.max_new_tokens, gen_batch_size=64, seed=seed)
    rewards = [math_reward(x, problems[i // samples].answer) for i, x in enumerate(roll.texts)]
    boxed = [last_boxed(x) is not None for x in roll.texts]
    sampled = sum(rewards) / len(rewards)
    # greedy by the one sampler, as training and evaluation decode
    texts = [t[0] for t in sampler.complete(model, tok, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=128)]
    greedy_acc = sum(math_reward(x, p.answer) for x, p in zip(texts, problems)) / len(problems)
    return {"sampled_reward": sampled, "boxed_rate": sum(boxed) / len(boxed),
            "reward_when_boxed": sum(r for r, b in zip(rewards, boxed) if b) / max(1, sum(boxed)),
            "greedy_accuracy": greedy_acc}


def worker_learn(spec: dict) -> dict:
    import shutil

    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    device = torch.device("cpu")
    model, tok = _load(spec["model_dir"], device)
    train = load_problems(spec["train_path"])
    test = [p for p in load_problems(spec["test_path"]) if int(p.meta.get("quality", 1)) == 1]
    cfg = grpo.GRPOConfig.toy(seed=spec["seed"], **spec.get("overrides", {}))
    before = heldout_reward(model, tok, test, cfg, samples=spec["samples"]) if spec["eval_before"] else None
    schedule = random_schedule([p.id for p in train], cfg.batch_size, spec["steps"], seed=spec["seed"])
    out = Path(spec["tmp"]) / f"learn_{spec['tag']}_{spec['seed']}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    last = grpo.train(model, tok, train, schedule, cfg, out_dir=out, resume=False)
    seconds = time.perf_counter() - t0
    after = heldout_reward(model, tok, test, cfg, samples=spec["samples"])
    from runtime import read_jsonl
    log = read_jsonl(out / "train_log.jsonl")
    return {"seed": spec["seed"], "before": before, "after": after, "train_seconds": seconds,
            "sec_per_step": seconds / len(log), "n_heldout": len(test),
            "train_reward_first5": sum(r["reward"] for r in log[:5]) / 5,
            "train_reward_last5": sum(r["reward"] for r in log[-5:]) / 5, "last_row_lr": last.get("lr")}


def learn(args, world) -> None:
    """--learn: per world (bare_frac) and seed, held-out reward before/after; table + JSON."""
    import statistics as st

    import toy

    section = {"config": asdict(grpo.GRPOConfig.toy()), "steps": args.learn_steps, "samples": args.samples,
               "eval": f"clean held-out toy test problems x {args.samples} samples at temperature 1 "
                       "(sampling seed 1234, the same for every measurement), greedy separately",
               "worlds": {}}
    print(f"{'world':>14s} {'seed':>4s} {'reward':>15s} {'boxed rate':>15s} {'reward|boxed':>15s} {'greedy':>15s}")
    for frac in args.bare_fracs:
        w = world if frac == toy.BARE_FRAC else toy.build_world(args.tmp / f"world_bare{frac}", seed=0,
                                                                   bare_frac=frac, verbose=False)
        tag = f"bare{frac}"
        # the starting model is the same for every seed, so its held-out reward is measured once
        runs = [run_worker("learn", {"model_dir": str(w.model_dir), "train_path": str(w.train_path),
                                     "test_path": str(w.test_path), "tmp": str(args.tmp), "tag": tag, "seed": s,
                                     "eval_before": i == 0, "steps": args.learn_steps, "samples": args.samples})
                for i, s in enumerate(args.seeds)]
        ok = [r for r in runs if "error" not in r]
        for r in runs:
            if "error" in r:
                print(f"{tag:>14s} {r.get('seed', '?')!s:>4s} error: {r['error']}")
        before = runs[0].get("before")  # measured by the first seed's worker only
        if not ok or before is None:
            print(f"{tag:>14s} no summary: {'every seed failed' if not ok else 'the first seed failed before its start measurement'}")
            section["worlds"][tag] = {"runs": runs}
            continue
        for r in ok:
            a = r["after"]
            print(f"{tag:>14s} {r['seed']:4d} " + " ".join(
                f"{before[k]:.3f} -> {a[k]:.3f}" for k in ("sampled_reward", "boxed_rate", "reward_when_boxed",
                                                           "greedy_accuracy")))
        ends = [r["after"]["sampled_reward"] for r in ok]
        summary = {"bare_frac": frac, "start_sampled_reward": before["sampled_reward"],
                   "end_sampled_reward_per_seed": ends, "end_mean": st.mean(ends),
                   "seed_spread_sd": st.pstdev(ends), "seed_spread_range": max(ends) - min(ends),
                   "margin": st.mean(ends) - before["sampled_reward"],
                   "start_boxed_rate": before["boxed_rate"],
                   "end_boxed_rate_mean": st.mean(r["after"]["boxed_rate"] for r in ok),
                   "start_reward_when_boxed": before["reward_when_boxed"],
                   "end_reward_when_boxed_mean": st.mean(r["after"]["reward_when_boxed"] for r in ok),
                   "start_greedy": before["greedy_accuracy"],
                   "end_greedy_per_seed": [r["after"]["greedy_accuracy"] for r in ok],
                   "sec_per_step": st.mean(r["sec_per_step"] for r in ok)}
        print(f"{tag:>14s} mean reward {summary['start_sampled_reward']:.3f} -> {summary['end_mean']:.3f}: "
              f"margin {summary['margin']:+.3f}, seed spread (range) {summary['seed_spread_range']:.3f}")
        section["worlds"][tag] = {"runs": runs, "summary": summary}
    _merge_results("learn", section)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------
def _merge_results(section: str, value) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[section] = value
    data["machine"] = f"{os.cpu_count()}-core CPU" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(data, indent=2) + "\n")


def _trl_available() -> bool:
    probe = "import sys, os; sys.path.append(os.environ.get('TRL_SITE', '')); import trl, torch; print(torch.__version__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() == torch.__version__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy", type=Path, default=TOY_DEFAULT, help="toy world folder (built if missing)")
    ap.add_argument("--smollm", type=Path, default=SMOLLM_DEFAULT if SMOLLM_DEFAULT.exists() else None)
    ap.add_argument("--steps", type=int, default=3, help="measured steps (after one warm-up step)")
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--models", nargs="+", default=["toy", "smollm"], help="which step timings to run")
    ap.add_argument("--learn", action="store_true", help="the learning measurement instead of timings")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--learn-steps", type=int, default=40)
    ap.add_argument("--bare-fracs", type=float, nargs="+", default=[0.3, 0.0],
                    help="toy worlds to measure learning on, by share of unboxed warm-start answers")
    ap.add_argument("--samples", type=int, default=4, help="sampled completions per held-out problem")
    ap.add_argument("--tmp", type=Path, default=Path("/tmp/bench_grpo"))
    ap.add_argument("--engines", action="store_true", help="generation tok/s per rollout engine and training "
                    "tok/s padded vs packed, instead of the step timings")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in the --engines workers")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, spec = args.worker[0], json.loads(args.worker[1])
        print(json.dumps({"ours": worker_ours, "trl": worker_trl, "learn": worker_learn, "engines": worker_engines}[kind](spec)))
        return

    if args.learn or args.engines or "toy" in args.models:
        world = _toy_world(args.toy)
        base = {"model_dir": str(world.model_dir), "train_path": str(world.train_path), "tmp": str(args.tmp)}
    else:  # SmolLM alone needs only problems, not the trained toy model
        import toy
        from data import write_problems

        args.tmp.mkdir(parents=True, exist_ok=True)
        write_problems(args.tmp / "problems.jsonl", toy.make_problems(256, seed=0))
        base = {"train_path": str(args.tmp / "problems.jsonl"), "tmp": str(args.tmp)}
    if args.learn:
        learn(args, world)
        return
    if args.engines:
        engines(args, base)
        return

    models = []
    if "toy" in args.models:
        models.append(("toy", base["model_dir"], base["train_path"], grpo.GRPOConfig.toy()))
    if "smollm" in args.models and args.smollm:
        # SmolLM2 has no ChatML-trained answer format, so "chatml" prompts; the step cost is what counts
        models.append(("smollm2-135m", str(args.smollm), base["train_path"],
                       grpo.GRPOConfig.toy(batch_size=4, group_size=8, max_new_tokens=64, micro_batch_size=8,
                                           gen_batch_size=4, lr=1e-6)))
    trl_ok = not args.no_trl and _trl_available()
    table = json.loads(RESULTS.read_text()).get("step", {}) if RESULTS.exists() else {}
    for name, mdir, train_path, cfg in models:
        spec = {**base, "model_dir": mdir, "train_path": str(train_path), "steps": args.steps,
                "batch_size": cfg.batch_size, "cfg": asdict(cfg)}
        ours = run_worker("ours", spec)
        entry = {"ours": ours, "settings": {k: spec["cfg"][k] for k in
                                            ("batch_size", "group_size", "max_new_tokens", "micro_batch_size")}}
        if trl_ok:
            entry["trl"] = run_worker("trl", spec)
            if "error" not in entry["trl"] and "error" not in ours:
                entry["trl_over_ours"] = entry["trl"]["step_seconds"]["total"] / ours["step_seconds"]["total"]
        else:
            entry["trl"] = {"skipped": "trl not importable with this torch (see TRL_SITE in the docstring)"}
        table[name] = entry
    print(f"{'model':14s} {'gen s':>7s} {'logp s':>7s} {'bwd s':>7s} {'opt s':>7s} {'total s':>8s} "
          f"{'peak MB':>8s} {'trl s':>7s} {'trl/ours':>8s}")
    for name, e in table.items():
        if not isinstance(e, dict) or "ours" not in e:  # e.g. a "note" string
            continue
        o = e["ours"]
        if "error" in o:
            print(f"{name:14s} error: {o['error']}")
            continue
        s = o["step_seconds"]
        trl_s = e["trl"].get("step_seconds", {}).get("total", float("nan"))
        print(f"{name:14s} {s['generation']:7.3f} {s['logprob']:7.3f} {s['backward']:7.3f} {s['optimizer']:7.3f} "
              f"{s['total']:8.3f} {o['peak_mb']:8.0f} {trl_s:7.3f} {e.get('trl_over_ours', float('nan')):8.2f}")
    _merge_results("step", table)


if __name__ == "__main__":
    main()
