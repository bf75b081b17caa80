"""Cardiac signals: ECG (any lead set) and PPG from WFDB records, EDF files or arrays."""
from domains.cardiac.io import CHANNELS

__all__ = ["CHANNELS"]
