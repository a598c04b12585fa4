"""report.py -- what a SAERL run reports: report.md (+ report.svg) and clusters.md.
Imports: estimators (NMI) and runtime (atomic files) from this project -- never saerl.py or grpo.py.

saerl.py's last stage hands its stages' outputs here; nothing in this file changes a result.

    write_report(root, cfg, gcfg, *, layer, paced, problems, quality, difficulty, clusters, results, times)
                                     report.md: the data engineering, accuracy per arm and step, steps to
                                     the target accuracy, ablations, where the time went per stage
    metric_name(samples, temperature)   the evaluation metric in words (greedy pass@1, avg@N)
    target_accuracy(target, finals) / steps_to_target(points, target)   the "steps to target" numbers
    paired_lines(items, metric), forest_svg(rows, axis)   arms against vanilla, paired, with intervals
    plot_curves(curves, path)        report.svg: accuracy per arm with 95% bands over seeds (hand-written SVG)
    cluster_summary(...)             clusters.md: per cluster its size, difficulty, top SAE features, examples
    cluster_purity(labels, metas)    NMI between the clusters and a known topic field
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from estimators import normalized_mutual_info
from runtime import atomic_write_text


def metric_name(samples: int, temperature: float) -> str:
    """The evaluation metric in words: greedy pass@1, or avg@N at a temperature."""
    if samples == 1:
        return "greedy pass@1"
    return f"avg@{samples} (mean reward of {samples} samples at temperature {temperature:g})"


def write_report(root, c, g, *, layer: int, paced: bool, problems: list, quality: dict, difficulty: dict,
                 clusters: dict, results: dict, times: dict) -> None:
    """report.md (+ report.svg) of a SAERL run (saerl.py): the data engineering (quality, difficulty,
    clusters), accuracy curves per arm, steps to the target accuracy, ablations, and where the time
    went per stage. c: config.Config, g: config.GRPOConfig; layer: the SAE's layer; paced: whether
    --pace budget applied; problems, quality, difficulty, clusters: the stages' outputs; results:
    {arm-s<seed>: {"eval": rows, "train": rows}}; times: {stage: {"seconds", "cached"}}."""
    root = Path(root)
    metric = metric_name(c.eval_samples, c.eval_temperature)
    curves, items = {}, {}   # arm -> {seed: [(step, acc)]}; arm -> {seed: the last evaluation's per-problem scores}
    for name, res in results.items():
        arm, seed = name.rsplit("-s", 1)
        curves.setdefault(arm, {})[int(seed)] = [(row["step"], row["mean"]) for row in res["eval"]]
        if res["eval"] and "items" in res["eval"][-1]:
            items.setdefault(arm, {})[int(seed)] = res["eval"][-1]["items"]
    finals = {arm: [pts[-1][1] for pts in seeds.values() if pts] for arm, seeds in curves.items()}
    target = target_accuracy(c.target, finals)
    kept = set(quality["kept"])
    dropped = [p for i, p in enumerate(problems) if i not in kept]
    lines = [f"# SAERL run: {root.name}", "",
             f"Model `{c.model}`, SAE features from `{c.sae_model}` layer {layer}, "
             f"{len(problems)} training problems from `{c.train_data}`.", "",
             "## Data engineering", "",
             quality_line(quality, len(problems), len(kept), len(dropped)),
             difficulty_line(difficulty, c.difficulty_labels),
             f"- Clusters: k = {clusters['k']}" + (f" (silhouette sweep {clusters['silhouettes']})" if clusters['silhouettes'] else "")
             + (f"; NMI with the `{clusters['purity']['field']}` field {clusters['purity']['nmi']:.3f}" if clusters["purity"] else "")
             + ". Per-cluster table: clusters.md.", ""]
    if any(p.meta.get("quality") in (0, 1) for p in problems):  # the truth is known (the toy world)
        lines += filter_truth_lines(problems, kept, set(quality.get("labelled", ())))
    lines += ["Examples of dropped problems (lowest quality score first):", ""]
    order = sorted((i for i in range(len(problems)) if i not in kept), key=lambda i: quality["scores"][i])
    for i in order[:5]:
        p = problems[i]
        tag = f" [{p.meta.get('corruption') or 'clean'}]" if "quality" in p.meta else ""
        lines.append(f"- `{_short(p.problem)}` → `{_short(p.answer, 30)}` (score {quality['scores'][i]:.3f}){tag}")
    n_eval = c.eval_limit or "all"
    if not any(pts for seeds in curves.values() for pts in seeds.values()):
        lines += ["", "## Training", "", "No evaluation was requested (--eval-every 0); see arms/*/train_log.jsonl.", ""]
        _write_report_file(root / "report.md", lines + _stage_times(times))
        return
    lines += ["", "## Training", "",
              f"Held-out accuracy: {metric} on {n_eval} problems of each of `{c.benchmarks}` (mean over "
              f"benchmarks), every {c.eval_every} steps; {c.steps} GRPO steps of {g.batch_size} problems × "
              f"{g.group_size} samples per arm (lr {g.lr:g}, loss {g.loss_type}).", ""]
    steps = sorted({s for seeds in curves.values() for pts in seeds.values() for s, _ in pts})
    lines += ["| step | " + " | ".join(f"{arm} (mean ± sd over {len(seeds)} seed{'s' * (len(seeds) > 1)})"
                                       for arm, seeds in curves.items()) + " |",
              "|---:|" + "---:|" * len(curves)]
    for s in steps:
        cells = []
        for seeds in curves.values():
            vals = [a for pts in seeds.values() for st, a in pts if st == s]
            cells.append(f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if vals else "-")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    start = [pts[0][1] for seeds in curves.values() for pts in seeds.values() if pts and pts[0][0] == 0]
    origin = "" if c.target is not None else " (vanilla's own final accuracy: not fixed in advance; pass --target)"
    if target is not None and start and target <= max(start) + 1e-12:
        lines += ["", f"Target accuracy {target:.3f}{origin} is not above the starting accuracy {max(start):.3f}: "
                  "no arm needed training to reach it, so steps-to-target is not informative here (pass --target)."]
    elif target is not None:
        lines += ["", f"Steps to reach the target accuracy {target:.3f}{origin}, interpolated between the "
                  "evaluations around the first crossing (mean over seeds, 95% t-interval):", ""]
        for arm, seeds in curves.items():
            hits = [steps_to_target(pts, target) for pts in seeds.values()]
            reached = [h for h in hits if h is not None]
            missed = len(hits) - len(reached)
            text = _mean_interval_text(reached, "{:.1f}") if reached else "not reached"
            lines.append(f"- {arm}: {text}" + (f"; not reached in {missed} of {len(hits)} seeds" if missed and reached else ""))
    if "vanilla" in items:
        lines += [""] + paired_lines(items, metric)
    ablations = [f"--{n.replace('_', '-')}" for n in ("no_curriculum", "no_cluster", "no_quality_filter") if getattr(c, n)]
    if c.mix != 0.25:
        ablations.append(f"--mix {c.mix}")
    if c.schedule != "saerl":
        ablations.append(f"--schedule {c.schedule}")
    if paced:
        ablations.append("--pace budget")
    if c.oracle:
        ablations.append(f"--oracle {c.oracle}")
    lines += ["", "Ablations in this run: " + (", ".join(ablations) if ablations else "none (SAERL defaults)") + ".", ""]
    lines += [plot_curves(curves, root / "report.svg"), ""]
    _write_report_file(root / "report.md", lines + _stage_times(times))


def quality_line(quality: dict, n: int, n_kept: int, n_dropped: int) -> str:
    """The report's line on the quality filter: the probe and its held-out metrics, or the oracle."""
    if quality.get("oracle"):
        return f"- Quality: the oracle (each problem's known quality); kept {n_kept} of {n}, dropped {n_dropped}."
    return (f"- Quality: probe trained on {quality['n_labelled']} labelled rows ({quality['n_negative']} negative) "
            f"from {quality['label_source']}; held-out "
            + ", ".join(f"{k} {v:.3f}" for k, v in quality["metrics"].items() if isinstance(v, float))
            + f". Kept {n_kept} of {n}, dropped {n_dropped} (lowest {quality['drop']:.0%}).")


def difficulty_line(difficulty: dict, labels: str) -> str:
    """The report's line on the difficulty proxy: its α, support and nested-CV figure, or the oracle."""
    if difficulty.get("oracle"):
        return "- Difficulty: the oracle (each problem's known difficulty)."
    held = difficulty["held_out"]
    return (f"- Difficulty proxy: ElasticNet (alpha {difficulty['alpha']:.3g} by {held.get('method', 'a held-out split')}"
            f", {difficulty['nonzero_coefficients']} non-zero features) on {difficulty['n_labelled']} labels ({labels}); "
            f"held-out Spearman {_fmt(held['spearman'])}, R² {_fmt(held['r2'])} (n = {held['n']}, each label predicted "
            "by the procedure fit without it)"
            + ("; all labels were equal, so the curriculum had no order to follow." if difficulty.get("constant_labels")
               else "."))


def filter_truth_lines(problems, kept: set, labelled: set) -> list[str]:
    """Where every problem's quality is known (meta "quality" 0/1): the filter's recall (known-bad
    problems dropped / known-bad) and precision (known-bad / dropped), first on the rows the probe never
    saw (not in its labelled subset: the figure that says how it generalises), then on all rows."""
    def rates(rows):
        bad = [i for i in rows if problems[i].meta.get("quality") == 0]
        dropped = [i for i in rows if i not in kept]
        caught = sum(i not in kept for i in bad)
        return (f"dropped {caught} of {len(bad)} known-bad (recall {_ratio(caught, len(bad))}); "
                f"{caught} of the {len(dropped)} dropped are known-bad (precision {_ratio(caught, len(dropped))})")

    unseen = [i for i in range(len(problems)) if i not in labelled]
    return [f"Filter against the known truth, on the {len(unseen)} rows the probe never saw: {rates(unseen)}. "
            f"On all {len(problems)} rows (its {len(labelled)} labelled rows included): {rates(range(len(problems)))}.",
            ""]


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def target_accuracy(target: float | None, finals: dict) -> float | None:
    """The accuracy whose first crossing is reported: --target when given, else vanilla's final accuracy
    (mean over its seeds); None when neither exists. finals: {arm: [final accuracy per seed]}."""
    if target is None and finals.get("vanilla"):
        target = float(np.mean(finals["vanilla"]))
    return target


def steps_to_target(points, target: float) -> float | None:
    """The step at which accuracy first reaches `target`, linearly interpolated between the last evaluation
    below it and the first at or above it (that first evaluation's step when it is the first of all);
    None when no evaluation reaches it. points: [(step, accuracy)] in step order."""
    for k, (step, acc) in enumerate(points):
        if acc >= target - 1e-12:
            if k == 0:
                return float(step)
            (s0, a0) = points[k - 1]
            return s0 + (target - a0) / (acc - a0) * (step - s0)
    return None


def paired_lines(items: dict, metric: str) -> list[str]:
    """Each arm against vanilla at the last evaluation, paired: per seed, the mean over problems of the
    difference of their scores (the same problems, the same sampling seeds), with a 95% normal interval
    over problems (evaluation noise only); over two or more seeds, the mean of those differences with a
    95% t-interval over seeds (training noise too). items: {arm: {seed: per-problem scores}}."""
    out = [f"Final {metric}, each arm minus vanilla, paired by seed and problem (points; 95% interval):", ""]
    for arm, seeds in items.items():
        if arm == "vanilla":
            continue
        per_seed = {}
        for seed, scores in seeds.items():
            base = items["vanilla"].get(seed)
            if base is None or len(base) != len(scores):
                continue
            d = np.asarray(scores, dtype=np.float64) - np.asarray(base, dtype=np.float64)
            half = 1.96 * float(d.std(ddof=1)) / np.sqrt(len(d)) if len(d) > 1 else 0.0
            per_seed[seed] = (float(d.mean()), half)
        if not per_seed:
            continue
        cells = ", ".join(f"seed {s}: {100 * m:+.1f} [{100 * (m - h):+.1f}, {100 * (m + h):+.1f}]"
                          for s, (m, h) in sorted(per_seed.items()))
        line = f"- {arm}: {cells}"
        if len(per_seed) > 1:
            line += "; over seeds " + _mean_interval_text([100 * m for m, _ in per_seed.values()], "{:+.1f}")
        out.append(line)
    return out


def _mean_interval_text(values: list[float], fmt: str) -> str:
    """"m" for one value, "m [low, high]" (95% t-interval over the values) for more."""
    mean, low, high = mean_and_interval(values)
    if len(values) < 2:
        return fmt.format(mean)
    return f"{fmt.format(mean)} [{fmt.format(low)}, {fmt.format(high)}] (n = {len(values)})"


def plot_curves(curves, path) -> str:
    """report.svg: held-out accuracy per step, one line per arm (the mean over its seeds) with a band
    (the 95% interval of that mean over seeds, t-distribution) where an arm has two seeds or more.
    Hand-written SVG, so no plotting package is needed; returns the markdown that shows it."""
    atomic_write_text(path, accuracy_svg(curves))
    return f"![held-out accuracy per step]({Path(path).name})"


T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}  # t(0.975, dof)
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")


def mean_and_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t-interval of the mean over seeds; low = high = mean for one seed."""
    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return mean, mean, mean
    half = T_975.get(n - 1, 1.96) * float(np.std(values, ddof=1)) / np.sqrt(n)
    return mean, mean - half, mean + half


def accuracy_svg(curves, *, width: int = 640, height: int = 400) -> str:
    """The SVG text of plot_curves. curves: {arm: {seed: [(step, accuracy)]}}."""
    left, right, top, bottom = 56, 170, 16, 44  # margins: axis labels left and below, the legend right
    series = {}
    for arm, seeds in curves.items():
        steps = sorted({st for pts in seeds.values() for st, _ in pts})
        series[arm] = []
        for st in steps:
            mean, lo, hi = mean_and_interval([a for pts in seeds.values() for s2, a in pts if s2 == st])
            series[arm].append((st, mean, max(lo, 0.0), min(hi, 1.0)))  # an accuracy stays in [0, 1]
    points = [p for rows in series.values() for p in rows]
    if not points:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"/>\n'
    s0, s1 = min(p[0] for p in points), max(p[0] for p in points)
    y0 = max(0.0, np.floor(min(p[2] for p in points) * 20) / 20)
    y1 = min(1.0, np.ceil(max(p[3] for p in points) * 20) / 20)
    y1 = y1 if y1 > y0 else y0 + 0.05
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(step):
        return left + (step - s0) / max(s1 - s0, 1) * plot_w

    def y(acc):
        return top + (y1 - acc) / (y1 - y0) * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           'font-size="12">', f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>']
    for i in range(6):  # y ticks and grid
        v = y0 + (y1 - y0) * i / 5
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + plot_w}" y2="{y(v):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    ticks = sorted({p[0] for p in points})
    for st in ticks[::max(1, len(ticks) // 8)]:
        out.append(f'<text x="{x(st):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{st}</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle">GRPO step</text>'
               f'<text x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">held-out accuracy</text>')
    for i, (arm, rows) in enumerate(series.items()):
        colour, n_seeds = COLOURS[i % len(COLOURS)], len(curves[arm])
        if n_seeds > 1:
            band = [(x(st), y(hi)) for st, _, _, hi in rows] + [(x(st), y(lo)) for st, _, lo, _ in reversed(rows)]
            out.append(f'<polygon class="band" points="{_svg_points(band)}" fill="{colour}" fill-opacity="0.18" '
                       'stroke="none"/>')
        out.append(f'<polyline class="mean" points="{_svg_points([(x(st), y(m)) for st, m, _, _ in rows])}" '
                   f'fill="none" stroke="{colour}" stroke-width="2"/>')
        ly = top + 14 + 38 * i
        note = f"{n_seeds} seeds, 95% band" if n_seeds > 1 else "1 seed"
        out.append(f'<line x1="{width - right + 12}" y1="{ly}" x2="{width - right + 32}" y2="{ly}" stroke="{colour}" '
                   f'stroke-width="2"/><text x="{width - right + 38}" y="{ly + 4}">{_xml(arm)}</text>'
                   f'<text x="{width - right + 38}" y="{ly + 19}" font-size="10" fill="#555">{note}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def forest_svg(rows, *, axis: str, width: int = 640, row_height: int = 28) -> str:
    """A forest plot as SVG text: one row per (name, mean, low, high), the mean a dot, the interval a
    line, a dashed line at zero (no difference). Hand-written, like accuracy_svg."""
    left, right, top, bottom = 150, 24, 12, 40
    height = top + bottom + row_height * max(len(rows), 1)
    lo = min([0.0] + [r[2] for r in rows])
    hi = max([0.0] + [r[3] for r in rows])
    pad = 0.05 * (hi - lo) or 1.0
    lo, hi = lo - pad, hi + pad
    plot_w = width - left - right

    def x(v):
        return left + (v - lo) / (hi - lo) * plot_w

    bottom_y = top + row_height * len(rows)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           'font-size="12">',
           f'<line class="zero" x1="{x(0):.1f}" y1="{top}" x2="{x(0):.1f}" y2="{bottom_y}" stroke="#999" '
           'stroke-dasharray="4 3"/>']
    for i, (name, mean, low, high) in enumerate(rows):
        cy = top + row_height * (i + 0.5)
        out.append(f'<text x="{left - 8}" y="{cy + 4:.1f}" text-anchor="end">{_xml(name)}</text>'
                   f'<line class="interval" x1="{x(low):.1f}" y1="{cy:.1f}" x2="{x(high):.1f}" y2="{cy:.1f}" '
                   f'stroke="#1f77b4" stroke-width="2"/><circle class="mean" cx="{x(mean):.1f}" cy="{cy:.1f}" r="4" '
                   'fill="#1f77b4"/>')
    for i in range(5):  # x ticks
        v = lo + (hi - lo) * i / 4
        out.append(f'<text x="{x(v):.1f}" y="{bottom_y + 16}" text-anchor="middle">{v:+.1f}</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">{_xml(axis)}</text></svg>')
    return "\n".join(out) + "\n"


def _svg_points(xy) -> str:
    return " ".join(f"{a:.1f},{b:.1f}" for a, b in xy)


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cluster_feature_means(features, clusters: torch.Tensor, k: int) -> torch.Tensor:
    """Mean activation of every feature over each cluster's rows, [k, d] (sparse-safe)."""
    X = torch.as_tensor(features).cpu()
    sizes = torch.bincount(clusters, minlength=k).clamp_min(1).double()
    sums = torch.zeros(k, X.shape[1], dtype=torch.float64)
    if X.layout == torch.strided:
        sums.index_add_(0, clusters, X.double())
    else:  # only the non-zeros: rows of a wide SAE matrix are never densified
        X = X.to_sparse_coo().coalesce()
        rows, cols = X.indices()
        sums.view(-1).index_add_(0, clusters[rows] * X.shape[1] + cols, X.values().double())
    return sums / sizes[:, None]


def cluster_summary(cluster_ids, difficulty, features, problems, *, top: int = 8,
                    examples: int = 3, max_chars: int = 160) -> str:
    """Markdown for clusters.md: per cluster its size, mean predicted difficulty, the `top` SAE
    features by mean activation over the cluster (feature id and mean), and `examples` problems
    spread over the cluster's difficulty order (easiest, middle, hardest for 3), each truncated
    to max_chars. features: [N, d_sae], dense or torch sparse."""
    clusters = [int(c) for c in np.asarray(cluster_ids.detach().cpu() if isinstance(cluster_ids, torch.Tensor) else cluster_ids).reshape(-1).tolist()]
    n = len(clusters)
    diff = np.asarray(difficulty.detach().cpu() if isinstance(difficulty, torch.Tensor)
                      else difficulty, dtype=np.float64).reshape(-1)
    if not diff.shape[0] == n == len(problems) == features.shape[0]:
        raise ValueError(f"cluster_ids ({n}), difficulty ({diff.shape[0]}), features "
                         f"({features.shape[0]}) and problems ({len(problems)}) must align")
    ids = sorted(set(clusters))
    dense_id = {c: r for r, c in enumerate(ids)}
    means = _cluster_feature_means(features, torch.tensor([dense_id[c] for c in clusters]),
                                   len(ids))
    lines = [f"# Clusters\n\n{n} problems in {len(ids)} clusters.\n"]
    for c in ids:
        items = sorted((i for i in range(n) if clusters[i] == c), key=lambda i: (diff[i], i))
        vals, feats = torch.topk(means[dense_id[c]], min(top, means.shape[1]))
        feat_text = ", ".join(f"`{int(f)}` ({float(v):.3g})" for v, f in zip(vals, feats)
                              if float(v) > 0)
        lines.append(f"## Cluster {c}\n\n- size: {len(items)}\n"
                     f"- mean predicted difficulty: {float(diff[items].mean()):.4g}\n"
                     f"- top SAE features (id, mean activation): {feat_text or 'none active'}\n"
                     f"- examples (easiest to hardest):")
        picks = sorted(set(np.linspace(0, len(items) - 1, min(examples, len(items)))
                           .round().astype(int).tolist()))
        for pos in picks:
            p = problems[items[pos]]
            text = " ".join(str(p.problem).split())
            if len(text) > max_chars:
                text = text[:max_chars - 1] + "…"
            answer = " ".join(str(p.answer).split())[:40]
            lines.append(f"  - `{p.id}` (d̂ = {diff[items[pos]]:.3g}): {text} → {answer}")
        lines.append("")
    return "\n".join(lines)


def cluster_purity(labels, metas) -> dict | None:
    """Normalised mutual information between clusters and a known topic field, when one exists."""
    for name in ("topic", "type", "subject"):
        topics = [m.get(name) for m in metas]
        if all(t is not None for t in topics):
            return {"field": name, "nmi": normalized_mutual_info(labels, topics)}
    return None


def _stage_times(times: dict) -> list[str]:
    """The report's last section: each stage's wall time in this run; a cached stage did no work."""
    done = {s: t for s, t in times.items() if t["seconds"] is not None}
    lines = ["## Where the time went", "", "| stage | wall time | |", "|---|---:|---|"]
    lines += [f"| {s} | {t['seconds']:.1f} s | {'cached' if t['cached'] else ''} |" for s, t in done.items()]
    lines += [f"| total | {sum(t['seconds'] for t in done.values()):.1f} s | (the report itself not included) |", ""]
    return lines


def _write_report_file(path, lines) -> None:
    atomic_write_text(path, "\n".join(lines))
    print(f"[saerl] report: {path}", file=sys.stderr, flush=True)


def _fmt(x) -> str:
    return "undefined" if x is None else f"{x:.3f}"


def _short(text: str, n: int = 70) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"
