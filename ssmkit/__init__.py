"""ssmkit: state space sequence models -- S4, S4D, Mamba, Mamba-2, Hyena, attention and hybrids."""

__version__ = "0.1.0"
