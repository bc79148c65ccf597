"""asv benchmark suite of optspec (see ../README.md)."""
