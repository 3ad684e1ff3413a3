"""The neural fields that are fitted (SIREN), how good a fit is, and rendering a field back onto a grid."""
