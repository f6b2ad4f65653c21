"""The ``seqeval`` metric module (load it with ``hf_dynmask.metrics.load("seqeval")``)."""
