"""Real-world corpus: third-party optimizers with the verdicts their source says they must get."""
