"""The presentation contexts the listener accepts: which SOP classes, in which transfer syntaxes.

Instances are stored exactly as received (no transcoding), so every transfer syntax listed here must be one
the imaging pipeline can decode (pydicom + pylibjpeg / pyjpegls plug-ins, see ``pyproject.toml``).
"""

from __future__ import annotations

from pydicom.uid import UID

VERIFICATION = UID("1.2.840.10008.1.1")

#: Storage SOP classes accepted by C-STORE (the MR and SEG classes of ``config/series_rules.yaml``).
STORAGE_SOP_CLASSES: dict[str, UID] = {
    "MR Image Storage": UID("1.2.840.10008.5.1.4.1.1.4"),
    "Enhanced MR Image Storage": UID("1.2.840.10008.5.1.4.1.1.4.1"),
    "Legacy Converted Enhanced MR Image Storage": UID("1.2.840.10008.5.1.4.1.1.4.4"),
    "Segmentation Storage": UID("1.2.840.10008.5.1.4.1.1.66.4"),
    "Label Map Segmentation Storage": UID("1.2.840.10008.5.1.4.1.1.66.7"),
}

#: Transfer syntaxes accepted for every storage SOP class: uncompressed first, then the common compressed ones.
TRANSFER_SYNTAXES: dict[str, UID] = {
    "Explicit VR Little Endian": UID("1.2.840.10008.1.2.1"),
    "Implicit VR Little Endian": UID("1.2.840.10008.1.2"),
    "Deflated Explicit VR Little Endian": UID("1.2.840.10008.1.2.1.99"),
    "Explicit VR Big Endian": UID("1.2.840.10008.1.2.2"),
    "JPEG Baseline (Process 1)": UID("1.2.840.10008.1.2.4.50"),
    "JPEG Extended (Process 2 & 4)": UID("1.2.840.10008.1.2.4.51"),
    "JPEG Lossless (Process 14)": UID("1.2.840.10008.1.2.4.57"),
    "JPEG Lossless SV1": UID("1.2.840.10008.1.2.4.70"),
    "JPEG-LS Lossless": UID("1.2.840.10008.1.2.4.80"),
    "JPEG-LS Near-Lossless": UID("1.2.840.10008.1.2.4.81"),
    "JPEG 2000 Lossless": UID("1.2.840.10008.1.2.4.90"),
    "JPEG 2000": UID("1.2.840.10008.1.2.4.91"),
    "HTJ2K Lossless": UID("1.2.840.10008.1.2.4.201"),
    "HTJ2K Lossless RPCL": UID("1.2.840.10008.1.2.4.202"),
    "HTJ2K": UID("1.2.840.10008.1.2.4.203"),
    "RLE Lossless": UID("1.2.840.10008.1.2.5"),
}

#: Verification is negotiated with the uncompressed syntaxes only.
VERIFICATION_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    UID("1.2.840.10008.1.2.1"),
    UID("1.2.840.10008.1.2"),
)


def storage_contexts() -> list[tuple[UID, list[UID]]]:
    """(abstract syntax, transfer syntaxes) pairs for ``AE.add_supported_context``."""
    syntaxes = list(TRANSFER_SYNTAXES.values())
    return [(uid, syntaxes) for uid in STORAGE_SOP_CLASSES.values()]
