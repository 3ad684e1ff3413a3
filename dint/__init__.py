"""dint: distributed Implicit Neural Teaching for SIREN neural fields over huge signals."""

__version__ = "0.1.0"
