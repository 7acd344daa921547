"""Training glue shared by the CLIs: Lightning modules and data modules, the trainer set-up, and
the paper's synthetic tasks (`python -m pipelines.synthetic`)."""
