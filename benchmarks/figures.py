"""The tutorial's figures: LOPA's computation, the toy task and what each method makes of it, how
the gate σ(Z_I) saturates in training, a trained LOPA adapter's prompt for two inputs, where its
parameters go, how a right-padded batch is read, and how one frozen model serves many tasks.

    pip install matplotlib                 # optional, for this script only
    python benchmarks/figures.py           # -> assets/figures/ (about a minute on 2 cores)
    python benchmarks/figures.py --adapter runs/sst2-lopa      # another trained LOPA adapter

  lopa_diagram.svg  e, MLP_u, MLP_v, Z_I, the gate and the frozen model     (tutorial section 3)
  toy_task.svg      the toy's 16 x 16 table of a + b odd, and each method's accuracy   (section 3)
  gate.svg          σ(Z_I) over the toy's training: saturated, per input, its slope    (section 3)
  lopa_prompt.png   Z_S, σ(Z_I) and Z for the first positive and the first negative dev sentence
  lopa_params.svg   the adapter's trainable parameters, module by module     (tutorial section 3)
  padding.svg       a right-padded batch behind a prompt, read at m + lengths - 1      (section 4)
  serving.svg       rows of two tasks in one batch through one frozen model            (section 7)

The last four but two need a trained LOPA adapter (by default the study's SmolLM2 one, which
`python benchmarks/study.py --arms lopa --seeds 0` trains); without it they are skipped.
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import toy  # noqa: E402
from plumbing.adapters import load_with_model  # noqa: E402
from plumbing.cli import UserError, cli  # noqa: E402
from benchmarks.variants import as_variant  # noqa: E402
from lopa import LOPA, label_logits  # noqa: E402

STUDY_ADAPTER = "runs/study/sst2-n2000-e2-lopa-seed0"  # SmolLM2, SST-2, 2000 examples x 2 epochs


def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable
    plt.rcParams["svg.hashsalt"] = "lopa"  # the same figure gives the same file: clean diffs
    return plt


def save(fig, path):
    fig.savefig(path, dpi=120, metadata={"Date": None} if path.endswith(".svg") else {})
    pyplot().close(fig)
    print(f"wrote {path}")


# ----------------------------------------------------------------------------- the trained prompt

@torch.no_grad()
def prompt_parts(tuner, ids):
    """Z_S (m, d), σ(Z_I) (m, d) and Z (m, d) for one input's ids (1, T)."""
    tuner = as_variant(tuner)  # benchmarks/variants.py: the gate of any LOPA adapter
    gate = tuner.instance_term(tuner.encode(ids, torch.tensor([ids.size(1)])))  # (1, m, d)
    return tuner.z_s.detach(), gate[0], tuner.combine(gate)[0]


def prompt_maps(tuner, examples, path, name="LOPA", dims=64):
    """Heat-maps of the first `dims` of d columns: σ(Z_I) on the left (the two inputs and their
    difference), Z_S and Z on the right. examples: two (title, ids (1, T)), positive first."""
    plt = pyplot()
    (pos, ids_pos), (neg, ids_neg) = examples
    z_s, gate_pos, z_pos = prompt_parts(tuner, ids_pos)                  # each (m, d)
    _, gate_neg, z_neg = prompt_parts(tuner, ids_neg)
    diff = gate_pos - gate_neg
    stats = {"gate_mean": gate_pos.mean().item(), "largest_diff": diff.abs().max().item(),
             "saturated": ((gate_pos < 0.01) | (gate_pos > 0.99)).float().mean().item(),
             "mean_diff": diff.abs().mean().item()}                     # over all d columns
    z_s, gate_pos, z_pos, gate_neg, z_neg, diff = (x[:, :dims] for x in
                                                   (z_s, gate_pos, z_pos, gate_neg, z_neg, diff))
    top, far = z_s.abs().max().item(), diff.abs().max().item()
    panels = [  # (matrix, title, colour map, vmin, vmax), left to right, then down
        (gate_pos, f"σ(Z_I), {pos}", "viridis", 0, 1),
        (z_s, "Z_S (every input's)", "RdBu_r", -top, top),
        (gate_neg, f"σ(Z_I), {neg}", "viridis", 0, 1),
        (z_pos, f"Z = Z_S ⊙ σ(Z_I), {pos}", "RdBu_r", -top, top),
        (diff, f"σ(Z_I) positive − negative (own scale; largest |·| here {far:.3f})", "RdBu_r",
         -far, far),
        (z_neg, f"Z = Z_S ⊙ σ(Z_I), {neg}", "RdBu_r", -top, top)]
    fig, axes = plt.subplots(3, 2, figsize=(13, 6.5))
    for ax, (x, title, cmap, lo, hi) in zip(axes.flat, panels):
        im = ax.imshow(x.float().numpy(), cmap=cmap, vmin=lo, vmax=hi, aspect="auto",
                       interpolation="nearest")
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_ylabel("prompt row")
        ax.set_yticks(range(0, x.size(0), 3))
        fig.colorbar(im, ax=ax, pad=0.01)
    for ax in axes[-1]:
        ax.set_xlabel(f"dimension (the first {x.size(1)} of d = {tuner.z_s.size(1)})")
    fig.suptitle(f"{name}: σ(Z_I), {stats['saturated']:.0%} of its entries below 0.01 or above "
                 f"0.99, differs between the two inputs by {stats['mean_diff']:.4f} on average",
                 fontsize=11)
    fig.tight_layout()
    save(fig, path)
    return stats


def param_bars(tuner, path, name="LOPA"):
    """One bar per trained module, from the tuner's own parameters."""
    plt = pyplot()
    c, d, h_enc = tuner.config, tuner.z_s.size(1), tuner.mlp_u[1].in_features
    parts = {"z_s": "Z_S  (m·d)",
             "mlp_u.1": "MLP_u layer 1  (h_enc·H + H)",
             "mlp_u.3": "MLP_u output  (H·m·r + m·r)",
             "mlp_v.1": "MLP_v layer 1  (h_enc·H + H)",
             "mlp_v.3": "MLP_v output  (H·d·r + d·r)"}
    n = dict.fromkeys(parts, 0)
    for key, p in tuner.named_parameters():
        if p.requires_grad:
            n[key if key == "z_s" else key.rsplit(".", 1)[0]] += p.numel()
    total = sum(n.values())
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.barh(list(parts.values())[::-1], list(n.values())[::-1], color="#fdae6b")
    for i, count in enumerate(list(n.values())[::-1]):
        ax.text(count, i, f" {count:,} ({100 * count / total:.1f}%)", va="center", fontsize=9)
    ax.set_xlim(0, 1.3 * max(n.values()))
    ax.xaxis.set_major_formatter("{x:,.0f}")
    ax.set_xlabel("trainable parameters")
    ax.set_title(f"{name}: {total:,} trainable parameters\n(d = {d}, h_enc = {h_enc}, m = {c.m}, "
                 f"r = {c.r}, H = {c.hidden})", fontsize=10)
    fig.tight_layout()
    save(fig, path)
    return n


# ----------------------------------------------------------------------------- two diagrams

PROMPT, TOKEN, PAD = "#fdd0a2", "#c6dbef", "#f0f0f0"


def cells(ax, x0, y, colours, labels=(), **edge):
    """A row of unit cells from column x0 on line y (line 0 on top)."""
    for i, colour in enumerate(colours):
        ax.add_patch(pyplot().Rectangle((x0 + i + 0.04, y + 0.1), 0.92, 0.8, facecolor=colour,
                                        edgecolor=edge.get("edgecolor", "none"),
                                        linewidth=edge.get("linewidth", 1)))
    for i, label in enumerate(labels):
        ax.text(x0 + i + 0.5, y + 0.5, label, ha="center", va="center", fontsize=7)


def canvas(left, right, height):
    """Axes in cell units, x from left to right, line 0 on top, no frame."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(0.75 * (right - left), 0.5 * height))
    fig.subplots_adjust(0, 0, 1, 1)  # the drawing fills the figure
    ax.set_xlim(left, right)
    ax.set_ylim(height, -0.2)
    ax.axis("off")
    return fig, ax


def padding_picture(path, m=3):
    """Three SST-2-like inputs, right-padded, behind m prompt vectors; the cell read per row."""
    rows = [["Review:", "a", "charming", "journey", ".", "Sentiment:"],
            ["Review:", "bleak", ".", "Sentiment:"], ["Review:", "dull", "Sentiment:"]]
    T = max(map(len, rows))
    fig, ax = canvas(-0.2, m + T + 4.2, len(rows) + 3.2)
    ax.text(m / 2, 0.5, f"Z: m = {m}", ha="center", fontsize=9)
    ax.text(m + T / 2, 0.5, f"E(x): T = {T}, right-padded with token 0", ha="center", fontsize=9)
    for t in range(m + T):
        ax.text(t + 0.5, 1.2, str(t), ha="center", fontsize=8, color="grey")
    for i, words in enumerate(rows):
        y, n = i + 1.5, len(words)
        cells(ax, 0, y, [PROMPT] * m, ["Z"] * m)
        cells(ax, m, y, [TOKEN] * n + [PAD] * (T - n), words + ["pad"] * (T - n))
        cells(ax, m + n - 1, y, ["none"], edgecolor="#d62728", linewidth=2.5)
        ax.text(m + T + 0.3, y + 0.5, f"lengths = {n}: read h at {m} + {n} − 1 = {m + n - 1}",
                va="center", fontsize=9, color="#d62728")
    ax.text(0, len(rows) + 2.2, "Causal attention: a real token sees only positions before it, "
            "never a pad after it.\nPosition −1 (the last column) is a pad in the shorter rows: "
            "reading it there is exercise 2's bug.", fontsize=9, va="top")
    save(fig, path)


def serving_picture(path, m=3):
    """Rows of a LOPA task and a prompt-tuning task in one batch: each row brings its own prompt,
    the model's weights are the same for all."""
    plt, shade = pyplot(), torch.Generator().manual_seed(0)
    rows = [("task A, LOPA", 6), ("task B, prompt tuning", 4), ("task A, LOPA", 3),
            ("task B, prompt tuning", 5)]
    T = max(n for _, n in rows)
    box = m + T + 1.6  # the model's left edge; it is 3.5 cells wide
    fig, ax = canvas(-4.6, box + 7.4, len(rows) + 2.6)
    blues = [plt.cm.Blues(v) for v in (0.35, 0.6, 0.45)]  # one prompt, Z_S, for all of task B
    for i, (who, n) in enumerate(rows):
        y = i + 0.5
        lopa = "LOPA" in who  # its prompt is made from the row's own input: a different one
        colours = [plt.cm.Oranges(0.2 + 0.6 * v) for v in torch.rand(m, generator=shade).tolist()]
        ax.text(-0.2, y + 0.5, who, ha="right", va="center", fontsize=9)
        cells(ax, 0, y, colours if lopa else blues, ["Z(x)" if lopa else "Z_S"] * m)
        cells(ax, m, y, [TOKEN] * n + [PAD] * (T - n), ["x"] * n)
        for start, end in ((m + T, box), (box + 3.5, box + 4.3)):
            ax.annotate("", (end, y + 0.5), (start, y + 0.5), arrowprops={"arrowstyle": "->"})
        ax.text(box + 4.4, y + 0.5, f"h → {who.split(',')[0]}'s label words", va="center",
                fontsize=9)
    ax.add_patch(plt.Rectangle((box, 0.5), 3.5, len(rows), facecolor="#e6edf7",
                               edgecolor="#5b7db1"))
    ax.text(box + 1.75, 0.5 + len(rows) / 2, "one frozen\nmodel:\nthe same\nweights for\n"
            "every row", ha="center", va="center", fontsize=9)
    ax.text(-4.4, len(rows) + 1, "A LOPA row's prompt Z(x) is its own; prompt tuning's Z_S is "
            "the same for every row of its task. Each LOPA row first runs the model once more,\n"
            "without a prompt, for its e = Enc(x): one extra pass per request. LoRA rows cannot "
            "join: LoRA changes the weights, not the input (mixed_batch_hidden refuses them).",
            fontsize=9, va="top")
    save(fig, path)


def diagram_picture(path):
    """LOPA's computation as boxes and arrows: what is trained, what is frozen (the tutorial's
    diagram, as an image that renders anywhere)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 3.6))
    fig.subplots_adjust(0, 0, 1, 1)
    ax.set_xlim(0, 19)
    ax.set_ylim(0, 7.2)
    ax.axis("off")
    trained, frozen = ("#ffe9cc", "#d9822b"), ("#e6edf7", "#5b7db1")
    boxes = {  # name: (x, y, width, text, colours)
        "x": (0.2, 3.1, 2.0, "input x\n(B, T)", ("white", "grey")),
        "enc": (3.0, 3.1, 2.6, "Enc: the frozen\nmodel, no prompt", frozen),
        "mu": (6.6, 4.9, 2.6, "MLP_u(e)\n→ u (B, m, r)", trained),
        "mv": (6.6, 1.3, 2.6, "MLP_v(e)\n→ v (B, d, r)", trained),
        "zi": (10.2, 3.1, 2.4, "Z_I = u vᵀ\n(B, m, d), rank r", ("white", "grey")),
        "z": (13.4, 3.1, 2.6, "Z = Z_S ⊙ σ(Z_I)\n(B, m, d)", ("white", "grey")),
        "zs": (13.4, 5.6, 2.6, "Z_S (m, d)\nshared by the task", trained),
        "fm": (16.6, 3.1, 2.2, "frozen model\n[Z ; E(x)]", frozen),
    }
    for x, y, w, text, (face, edge) in boxes.values():
        ax.add_patch(plt.Rectangle((x, y), w, 1.3, facecolor=face, edgecolor=edge))
        ax.text(x + w / 2, y + 0.65, text, ha="center", va="center", fontsize=8.5)

    def arrow(a, b, label=""):
        (xa, ya, wa, *_), (xb, yb, wb, *_) = boxes[a], boxes[b]
        start = (xa + wa, ya + 0.65) if xb > xa + wa else (xa + wa / 2, ya)
        end = (xb, yb + 0.65) if xb > xa + wa else (xb + wb / 2, yb + 1.3)
        ax.annotate("", end, start, arrowprops={"arrowstyle": "->", "color": "#444444"})
        if label:
            ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.15, label, fontsize=8,
                    ha="center")
    for a, b, label in (("x", "enc", ""), ("enc", "mu", "e"), ("enc", "mv", "e"),
                        ("mu", "zi", ""), ("mv", "zi", ""), ("zi", "z", "σ"), ("zs", "z", ""),
                        ("z", "fm", "")):
        arrow(a, b, label)
    ax.plot([1.2, 1.2, 17.7], [3.1, 0.75, 0.75], color="#999999", linewidth=1)
    ax.annotate("", (17.7, 3.1), (17.7, 0.75), arrowprops={"arrowstyle": "->", "color": "#999999"})
    ax.text(9.5, 0.85, "E(x): the input's own token embeddings follow the prompt", ha="center",
            fontsize=8, color="grey")
    ax.text(0.2, 0.15, "orange: trained (Z_S, MLP_u, MLP_v)    blue: frozen (the model, and the "
            "encoder, by default the same model)", fontsize=8.5)
    save(fig, path)


def toy_picture(path, seeds=3, steps=300):
    """The toy task of toy.py as a table (is a + b odd?), and what each method reaches on it."""
    plt = pyplot()
    runs = [toy.run(1, seed, steps) for seed in range(seeds)]
    fig, (table, bars) = plt.subplots(1, 2, figsize=(10, 3.8),
                                      gridspec_kw={"width_ratios": [1, 1.5]})
    ids, _, y = toy.parity_task()
    table.imshow(y.view(16, 16).T.numpy(), cmap="Greys", vmin=-0.6, vmax=1.4, origin="lower",
                 extent=(0.5, 16.5, 16.5, 32.5), aspect="auto")
    table.set_xlabel("a (one token)")
    table.set_ylabel("b (one token)")
    table.set_title("the toy: is a + b odd? (dark: odd)", fontsize=10)
    names = list(runs[0])
    means = [sum(r[n][1] for r in runs) / len(runs) for n in names]
    colours = ["#9ecae1" if n.startswith("prompt") else "#fdae6b" for n in names]
    bars.barh(range(len(names)), means, color=colours)
    for i, (name, mean) in enumerate(zip(names, means)):
        bars.text(mean + 0.01, i, f"{mean:.2f}  ({runs[0][name][0]:,} trained)", va="center",
                  fontsize=8.5)
    bars.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    bars.set_yticks(range(len(names)), names, fontsize=9)
    bars.invert_yaxis()
    bars.set_xlim(0, 1.45)
    bars.set_xlabel(f"accuracy on the 256 pairs, mean of seeds 0-{seeds - 1} (0.5: chance)")
    bars.set_title("a fixed prompt cannot, a prompt per input can", fontsize=10)
    fig.tight_layout()
    save(fig, path)
    return {n: m for n, m in zip(names, means)}


def gate_picture(path, steps=300):
    """σ(Z_I) over training on the toy: the share of entries near 0 or 1, how much it differs from
    input to input, and σ'(Z_I) = σ(1 - σ), the factor every gradient to the MLPs passes
    through."""
    plt = pyplot()
    ids, lengths, y = toy.parity_task()
    model = toy.frozen_model(1, 0)
    torch.manual_seed(0)
    tuner = toy.TUNERS["lopa"](model)
    e = tuner.encode(ids, lengths)
    opt = torch.optim.AdamW(tuner.trainable_parameters(), lr=1e-2, weight_decay=0.0)
    curves = {"saturated": [], "spread": [], "slope": []}
    for _ in range(steps + 1):
        with torch.no_grad():
            gate = as_variant(tuner).instance_term(e)                 # σ(Z_I): (256, m, d)
        curves["saturated"].append(((gate < 0.01) | (gate > 0.99)).float().mean().item())
        curves["spread"].append(gate.std(0).mean().item())
        curves["slope"].append((gate * (1 - gate)).mean().item() / 0.25)
        loss = torch.nn.functional.cross_entropy(
            label_logits(model, tuner(ids, lengths, e), toy.LABELS), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    labels = {"saturated": "share of σ(Z_I) entries below 0.01 or above 0.99",
              "spread": "σ(Z_I)'s spread from input to input (std)",
              "slope": "σ'(Z_I) = σ(1 − σ), as a share of its start 0.25"}
    for name, values in curves.items():
        ax.plot(values, label=labels[name])
    ax.set_xlabel("training step (LOPA on the toy, seed 0)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8.5, loc="center right")
    fig.tight_layout()
    save(fig, path)
    return {k: v[-1] for k, v in curves.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", default=None, help="a LOPA folder written by train.py (default: "
                   f"{STUDY_ADAPTER}, its figures skipped if it is not there)")
    p.add_argument("--out", default=os.path.join(ROOT, "assets", "figures"))
    p.add_argument("--toy-seeds", type=int, default=3)
    p.add_argument("--toy-steps", type=int, default=300)
    args = p.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("the figures need matplotlib: pip install matplotlib") from None
    folder = args.adapter or (STUDY_ADAPTER if os.path.exists(STUDY_ADAPTER) else None)
    adapter = folder and load_lopa(folder)  # a wrong adapter is refused before anything is drawn
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)  # the toy's matmuls are too small for a second thread
    diagram_picture(os.path.join(args.out, "lopa_diagram.svg"))
    accs = toy_picture(os.path.join(args.out, "toy_task.svg"), args.toy_seeds, args.toy_steps)
    print("toy: " + ", ".join(f"{k} {v:.2f}" for k, v in accs.items()))
    end = gate_picture(os.path.join(args.out, "gate.svg"), args.toy_steps)
    print("toy gate after {n} steps: {saturated:.0%} near 0 or 1, spread {spread:.3f}, slope "
          "{slope:.2f} of its start".format(n=args.toy_steps, **end))
    padding_picture(os.path.join(args.out, "padding.svg"))
    serving_picture(os.path.join(args.out, "serving.svg"))
    if not adapter:
        print(f"skipped lopa_prompt.png and lopa_params.svg: no adapter in {STUDY_ADAPTER}")
        return 0
    adapter_figures(*adapter, args.out)
    return 0


def load_lopa(folder):
    tuner, info, tokenizer = load_with_model(folder, "cpu")
    if not isinstance(tuner, LOPA):
        raise UserError(f"{folder} holds a {info['method']!r} adapter; figures needs lopa")
    return tuner, info, tokenizer


def adapter_figures(tuner, info, tokenizer, out):
    task, name = data.TASKS[info["task"]], f"LOPA on {info['task']}, {info['model']}"
    examples = []
    for label in (1, 0):  # the first dev example of each class
        texts = next(texts for texts, y in data.load_split(task.name, "dev") if y == label)
        ids = torch.tensor([data.tokenize(task, texts, tokenizer, max_len=256)])   # (1, T)
        short = texts[0] if len(texts[0]) < 40 else texts[0][:37] + "..."
        examples.append((f'{task.label_words[label].strip()}: "{short.strip()}"', ids))
    stats = prompt_maps(tuner, examples, os.path.join(out, "lopa_prompt.png"), name)
    print("σ(Z_I): mean {gate_mean:.3f}, {saturated:.0%} of entries below 0.01 or above 0.99; "
          "|positive − negative|: largest {largest_diff:.3f}, mean {mean_diff:.4f}"
          .format(**stats))
    param_bars(tuner, os.path.join(out, "lopa_params.svg"), name)


if __name__ == "__main__":
    cli(main)
