"""Skeleton sequences: NTU RGB+D .skeleton files and (N, C, T, V, M) arrays on the 25-joint body graph."""
from scimae.core.errors import require

require("skeleton sequences", "skeleton", "scipy")
