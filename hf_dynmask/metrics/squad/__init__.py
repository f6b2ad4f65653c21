"""The ``squad`` metric module (load it with ``hf_dynmask.metrics.load("squad")``)."""
