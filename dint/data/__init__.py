"""Signals as chunked zarr v3 stores: readers of signal files, the store, its pyramids, and which chunks each
rank holds."""
