"""The ``accuracy`` metric module (load it with ``hf_dynmask.metrics.load("accuracy")``)."""
