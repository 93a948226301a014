"""immunoplex: immunotherapy response from multiplex tumour images plus gene expression."""

__version__ = "0.1.0"
