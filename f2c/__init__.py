"""F2C / FFC: face recognition training with a Dynamic Class Pool instead of the FC layer
(arXiv 2105.10375), with the full FC and Partial FC baselines. See README.md."""
