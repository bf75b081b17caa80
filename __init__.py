"""scimae: masked-autoencoder pretraining for scientific data.

``scimae.core`` is the domain-agnostic machinery, ``scimae.domains.<name>`` the domain packages (brain_mri,
cardiac, remote_sensing, scene3d, skeleton) and ``scimae.pipelines`` the jobs the ``scimae`` command runs.
Importing ``scimae`` pulls in nothing but the standard library.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scimae")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
