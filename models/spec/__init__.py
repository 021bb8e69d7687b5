"""The job spec: its fields, the problems that need a dataset to show, its error explainer, and sweeps."""
