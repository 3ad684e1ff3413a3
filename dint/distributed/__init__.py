"""Process groups and the few collectives dint needs (nccl on CUDA, gloo on CPU), and the torchrun command line."""
