"""Training: the optimization loop (`loop`) and co-training on a target + selected-prior mixture (`cotraining`)."""
