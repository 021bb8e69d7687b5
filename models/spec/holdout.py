"""How many examples a held-out fraction takes: one rule for the split itself (models/data/splits.py)
and for the check at submission that a split leaves some to train on (problems.py)."""


def held_out(n: int, fraction: float) -> int:
    """How many of n examples `fraction` holds out: at least one."""
    return max(1, int(round(n * fraction)))
