"""Explanations of trained models (`largo explain`): integrated gradients through Captum, attention rollout, rendering.

What to attribute for an architecture (pixels, log-mel frames, token embeddings), the baseline and the view come
from its spec (`ArchSpec.attribution`); this package does the rest for any spec:

  attribute.py   integrated gradients (layer integrated gradients for embeddings) and the completeness check
  rollout.py     attention rollout across the trunk's blocks (SDPA keeps its weights: they are recomputed from q and k)
  render.py      heatmaps over images and spectrograms, colour-coded HTML over tokens, the index page
  lm.py          language models: per-token loss, top-k next tokens, a next token attributed to the prompt; samples
  seq2seq.py     sequence to sequence: the decoded output, each of its tokens attributed to the source and the output before it
  inputs.py      inputs from files, folders, text and splits; output names
  run.py         the command: inputs (files, folders, text, a split) -> one file per input + index.html + explain.json
"""
