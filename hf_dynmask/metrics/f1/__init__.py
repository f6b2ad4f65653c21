"""The ``f1`` metric module (load it with ``hf_dynmask.metrics.load("f1")``)."""
