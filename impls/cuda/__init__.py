"""Native CUDA implementations generated from the specs (see impls/cuda/README.md)."""
