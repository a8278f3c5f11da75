"""DSU (Doctor Sample Unit): music source separation and restoration as persistent workers."""
__version__ = "0.1.0"
