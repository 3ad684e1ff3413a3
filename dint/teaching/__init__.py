"""Implicit Neural Teaching: the teacher's selection (exact over ranks), balancing ranks, and the batch plans."""
