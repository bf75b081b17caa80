"""Cardiac signals: ECG (any lead set) and PPG from WFDB records, EDF files or arrays."""
from scimae.core.errors import require

require("cardiac signals", "cardiac", "wfdb", "scipy")

from scimae.domains.cardiac.io import CHANNELS  # noqa: E402

__all__ = ["CHANNELS"]
