"""The ``f1`` metric module (load it with ``hf_dynmask.training.metrics.load("f1")``)."""
