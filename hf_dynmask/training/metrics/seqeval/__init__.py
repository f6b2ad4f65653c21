"""The ``seqeval`` metric module (load it with ``hf_dynmask.training.metrics.load("seqeval")``)."""
