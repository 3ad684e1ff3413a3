"""What a run shows: selection and field maps, pictures, plots, TensorBoard."""
