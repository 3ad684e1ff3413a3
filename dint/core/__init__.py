"""What every layer builds on: one-line errors, safe writes and locks, machine resources, the config tree."""
