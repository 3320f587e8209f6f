"""The plan as a readable table or stable JSON, and the plan-vs-measured table of a finished run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from largo.fileio import write_json_atomic


def plan_json(plan: dict[str, Any]) -> str:
    """Stable JSON: sorted keys, two-space indent, so two plans diff cleanly."""
    return json.dumps(plan, indent=2, sort_keys=True)


def _si(x: float, unit: str = "") -> str:
    """6.74e9 -> '6.74B'; small numbers unchanged."""
    for div, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def bytes_str(x: float) -> str:
    """Bytes in TiB, GiB, MiB or KiB, three significant digits."""
    for div, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(x) >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.0f} B"


def duration_str(seconds: float) -> str:
    """Seconds as s, min, h or days."""
    for div, unit in ((86400, "days"), (3600, "h"), (60, "min")):
        if seconds >= div:
            return f"{seconds / div:.3g} {unit}"
    return f"{seconds:.3g} s"


def _memory_table(plan: dict[str, Any]) -> list[str]:
    """One column per strategy/recompute option, one row per component."""
    opts = plan["memory"]
    names = list(opts)
    rows = [("params", "params"), ("grads", "grads"), ("  at the peak", "grads_at_peak"), ("optimizer", "optimizer"),
            ("activations", "activations"), ("temporaries", "temporaries"), ("peak", "peak")]
    width = max(16, *(len(n) + 2 for n in names))
    head = f"  {'':<13}" + "".join(f"{_label(n, opts[n]):>{width}}" for n in names)
    lines = [head]
    for label, key in rows:
        lines.append(f"  {label:<13}" + "".join(f"{bytes_str(opts[n][key]):>{width}}" for n in names))
    lines.append(f"  {'peak phase':<13}" + "".join(f"{opts[n]['peak_phase']:>{width}}" for n in names))
    fit = [f"mb {o['micro_batch']} x {o['accum_steps']}" if o["fits"] else "no" for o in opts.values()]
    lines.append(f"  {'fits':<13}" + "".join(f"{f:>{width}}" for f in fit))
    return lines


def _label(name: str, opt: dict[str, Any]) -> str:
    base, _, ac = name.partition("+")
    shards = f"/{opt['shards']}" if base == "fsdp" else ""
    return f"{base}{shards}{' +AC' if ac else ''}"


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a terminal table."""
    p, f, d, dev, lay = plan["params"], plan["flops"], plan["data"], plan["device"], plan["layout"]
    m, b = plan["model"], plan["batch"]
    bpp = lay["bytes_per_param"]
    lines = [
        f"largo plan: {plan['workload']} on {dev['count']} x {dev['type']} ({dev['precision']}, layout {lay['name']}, {lay['optimizer']})",
        f"model          {m['arch']}: d={m['dim']} layers={m['n_layers']} heads={m['n_heads']}/{m['kv_heads']}kv mlp={m['hidden']} "
        + (f"vocab={m['vocab_size']} " if "vocab_size" in m else "") + (f"classes={m['num_classes']} " if "num_classes" in m else "")
        + f"seq={m['max_seq_len']}",
        f"parameters     {p['total']:,} (embedding {p['embedding']:,}; {p['per_block']:,} per block) counted on the meta device",
        f"FLOPs/token    {_si(f['per_token'])} (forward {_si(f['forward_per_token'])}, backward {_si(f['backward_per_token'])}; "
        f"attention {_si(f['attention_per_token'])})",
        f"training       {_si(d['tokens'])} tokens ({b['steps']:,} steps of {b['tokens_per_step']:,}) = {f['total']:.3g} FLOPs "
        f"= {f['pf_days']:.3g} PF-days",
        f"data           {d['ratio_to_chinchilla']:.3g}x Chinchilla ({_si(d['chinchilla_tokens'])} = 20/param). {d['advice']}",
    ]
    if d["dataset_tokens"]:
        lines.append(f"               prepared dataset: {_si(d['dataset_tokens'])} tokens -> {d['epochs']:.3g} epochs")
    else:
        lines.append("               prepared dataset: none found (run `largo prepare` to count its tokens)")
    lines.append(f"bytes/param    {bpp['params']} weights + {bpp['grads']} grads + {bpp['optimizer']:.3g} optimizer "
                 f"= {bpp['params'] + bpp['grads'] + bpp['optimizer']:.3g} ({lay['about']})")
    lines.append(f"memory/device  usable {bytes_str(dev['usable_bytes'])} of {bytes_str(dev['memory_bytes'])}")
    lines += _memory_table(plan)
    if plan.get("configured"):
        c = plan["configured"]
        measured = f" (measured in the timed steps: {bytes_str(c['measured_peak'])})" if c.get("measured_peak") else ""
        lines.append(f"  configured micro-batch {c['micro_batch']} x {c['accum_steps']} ({c['strategy']}): peak {bytes_str(c['peak'])}"
                     f"{measured}, {'fits' if c['fits'] else 'does NOT fit'}")
    rec, t = plan["recommendation"], plan["time"]
    if t:
        # t["mfu"] is the dense-matmul utilisation (attention FLOPs weighted by their measured speed): the planner's unit,
        # above 100% where attention is slow; a user compares the plain MFU (all FLOPs / step / peak) with the run's
        lines.append(f"time           step {duration_str(t['step_s'])}, total {duration_str(t['wall_s'])}, "
                     f"{t['device_hours']:.4g} device-hours at {_si(dev['peak_flops'], 'FLOP/s')} peak and MFU {100 * t['mfu_model']:.3g}% "
                     f"({t['mfu_source']})")
        if t["attention_speed"] != 1.0:
            dense = f"; the dense matmuls at {100 * t['mfu']:.3g}% of peak" if t["mfu"] <= 1 else ""  # past 1: the speed is off
            lines.append(f"               attention FLOPs run at {t['attention_speed']:.2f}x the GEMM rate here (measured){dense}")
    lines.append("recommendation")
    if rec["fits"]:
        lines.append(f"  strategy {rec['strategy']}: {rec['reasons']['strategy']}")
        lines.append(f"  checkpointing {rec['reasons']['checkpointing']}")
        lines.append(f"  micro-batch {rec['reasons']['micro_batch']}")
        lines += [f"  note: {n}" for n in rec["notes"]]
    else:
        lines.append(f"  does not fit: {rec['reasons']['fits']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- plan vs measured


def comparison_rows(estimate: dict[str, float], measured: dict[str, float | None]) -> list[dict[str, Any]]:
    """(quantity, estimate, measured, measured / estimate) for every quantity both sides have."""
    rows = []
    for key in estimate:
        e, m = estimate[key], measured.get(key)
        rows.append({"quantity": key, "estimate": e, "measured": m, "ratio": (m / e) if (m is not None and e) else None})
    return rows


def _fmt(key: str, x: float | None) -> str:
    if x is None:
        return "n/a"
    if key.endswith("bytes"):
        return bytes_str(x)
    if key.endswith("_s"):
        return f"{x:.4g} s"
    if key == "mfu":
        return f"{100 * x:.3g}%"
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:.4g}"


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Markdown table: quantity | estimate | measured | ratio."""
    lines = ["| quantity | estimate | measured | measured/estimate |", "|---|---:|---:|---:|"]
    for r in rows:
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.3f}"
        lines.append(f"| {r['quantity']} | {_fmt(r['quantity'], r['estimate'])} | {_fmt(r['quantity'], r['measured'])} | {ratio} |")
    return "\n".join(lines)


def write_comparison(run_dir: Path, rows: list[dict[str, Any]], context: dict[str, Any]) -> str:
    """plan_vs_measured.json and .md in the run directory; returns the markdown table."""
    table = format_rows(rows)
    write_json_atomic(run_dir / "plan_vs_measured.json", {"rows": rows, **context})
    notes = "".join(f"- {k}: {v}\n" for k, v in context.items())
    (run_dir / "plan_vs_measured.md").write_text(f"# Plan vs measured\n\n{table}\n\n{notes}")
    return table
